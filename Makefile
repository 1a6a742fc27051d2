# aios-fast developer tasks. Everything runs in a project-local virtual environment,
# .venv, made with python3 (Debian/Ubuntu: apt-get install python3-venv), so nothing
# touches the system's packages (PEP 668). PY=/path/to/python uses that interpreter
# instead, as it is (no venv).
VENV ?= .venv
PYTHON3 ?= python3
ifdef PY
STATE = build/.installed-$(notdir $(PY))
else
PY = $(VENV)/bin/python
STATE = $(VENV)/.installed
endif
# Installed: the package, compiled (all `make run` needs); then, for `make test`, the
# [test] extra (test, lint and Kubernetes tools); for `make dist`, the [dist] extra.
STAMP = $(STATE)
TEST_STAMP = $(STATE)-test
DIST_STAMP = $(STATE)-dist
PIP = $(PY) -m pip install --disable-pip-version-check --progress-bar off
# What a (re)install depends on: change one of these and `make setup` installs again.
SOURCES = pyproject.toml setup.py setup_modules.py $(wildcard native/aios_fast/*.pyx native/aios_fast/*.pxd)
# The native gRPC front is built only where libnghttp2's headers are: installing (or
# removing) them rebuilds at the next make (the mark names the state of the last build).
NGHTTP2_H = $(wildcard /usr/include/nghttp2/nghttp2.h /usr/local/include/nghttp2/nghttp2.h)
FRONT_MARK = $(STATE)-front-$(if $(NGHTTP2_H),yes,no)
VENV_PY = $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/bin/python)
NO_FRONT = make: WARNING: the native gRPC front is NOT built (libnghttp2's headers are \
	missing): the executor serves with grpcio, 10-18x more CPU per task. Install \
	libnghttp2-dev (apt-get install libnghttp2-dev) and run 'make setup' to rebuild it.

.PHONY: setup setup-test compile test test-fast test-compiled test-pure bench lint build-check dist dist-check run clean

setup: $(STAMP)             ## install the package (compiling native/), once
setup-test: $(TEST_STAMP)   ## ... and the test tools (pyproject's [test] extra), once

$(VENV)/bin/python:
	@echo "make: creating $(VENV) with $(PYTHON3)"
	@$(PYTHON3) -m venv $(VENV) || { echo "make: cannot create $(VENV): install python3-venv (apt-get install python3-venv), or run with PY=/path/to/python"; exit 1; }

$(STATE)-front-%: | $(VENV_PY)
	@mkdir -p $(dir $(STATE))
	@rm -f $(STATE)-front-*
	@touch $@

$(STAMP): $(SOURCES) $(FRONT_MARK) | $(VENV_PY)
	@mkdir -p $(dir $(STAMP))
	@echo "make: installing build tools and aios-fast into $(if $(VENV_PY),$(VENV),$(PY)) (compiling native/; a minute or two the first time)"
	$(PIP) -q 'pip>=23' 'setuptools>=77' 'Cython>=3.1' wheel
	$(PIP) -e .
	@$(PY) -c "import aios_fast._front" 2>/dev/null || echo "$(NO_FRONT)" >&2
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@echo "make: installing the test tools (aios-fast[test]) into $(if $(VENV_PY),$(VENV),$(PY))"
	@$(PY) scripts/extra_requirements.py test > $(STATE)-test.txt
	$(PIP) -r $(STATE)-test.txt
	@touch $(TEST_STAMP)

$(DIST_STAMP): $(STAMP)
	@$(PY) scripts/extra_requirements.py dist > $(STATE)-dist.txt
	$(PIP) -q -r $(STATE)-dist.txt
	@touch $(DIST_STAMP)

compile: setup              ## rebuild the Cython extensions in place
	$(PY) setup.py -q build_ext --inplace

test: setup-test            ## README's test command: the suite compiled, then what differs pure-Python
	$(MAKE) test-compiled
	$(MAKE) test-pure PURE_ONLY_DIFFERENCES=1

test-fast: setup-test       ## the unit layer only: in process, no sockets, no slow property runs
	$(PY) -m pytest -q -m "not integration and not slow"

# Test modules run in parallel (pytest-xdist), a module per worker (--dist loadfile: its
# module-scoped fixtures, processes and a trained model, are made once); most of a
# process test's time is waiting for processes, not CPU, so 4 workers pay off on 2 cores.
JOBS ?= 4
XDIST = $(if $(filter-out 0 1,$(JOBS)),-n $(JOBS) --dist loadfile)

test-compiled: setup-test
	$(PY) -m pytest -q $(XDIST)

# Suites that never touch the extensions run once, in the compiled pass: the registry never
# imports aios_fast (tests/registry/test_layout.py checks it); layout and protos read source.
ONCE = --ignore=tests/registry --ignore=tests/test_layout.py --ignore=tests/test_protos.py
# What differs without the extensions: the codec and the balancers are the pure twins
# (aios_fast.codec / aios_fast.lb select them), the executor's front is grpc.aio and its
# instance links the grpc.aio stream (executor.link auto). The compiled pass already
# tested both twins side by side, both fronts and the native link; make test's pure pass
# runs the modules whose processes go through the selectors end to end, the link's
# fault tests over the gRPC link, and the vDAG runs and faults with their hops and
# answers on gRPC streams (the compiled pass puts them on the framed fronts).
PURE_DIFFERENCES = tests/test_codec.py tests/test_lb.py tests/test_policy.py \
	tests/test_router.py tests/test_executor.py tests/test_executor_mgmt.py \
	tests/test_instance.py tests/test_routing.py tests/test_front.py tests/test_batching.py \
	tests/test_faults.py tests/test_link.py tests/test_vdag_run.py tests/test_vdag_faults.py

test-pure: setup-test       ## the suite on the pure-Python twins (AIOS_FAST_NO_EXTENSIONS=1)
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pytest -q $(XDIST) \
		$(if $(PURE_ONLY_DIFFERENCES),$(PURE_DIFFERENCES),$(ONCE))

bench: setup-test           ## benchmarks; updates bench/RESULTS.md
	$(PY) -m bench.codec --write
	$(PY) -m bench.lb --write
	$(PY) -m bench.executor --write
	$(PY) -m bench.faults --write
	$(PY) -m bench.front --write
	$(PY) -m bench.batching --write
	$(PY) -m bench.registry_filter --write
	$(PY) -m bench.registry_http --write
	$(PY) -m bench.registry_hostile --write
	$(PY) -m pytest bench -q --benchmark-enable --benchmark-max-time=0.5

lint: setup-test            ## ruff, mypy (0 errors on aios_fast/ and registry_server/), generated protobuf current
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) scripts/gen_protos.py --check

build-check: setup          ## wheels: compiled one carries the .so files, pure one none
	rm -rf build/wheels && mkdir -p build/wheels/c build/wheels/pure
	$(PY) -m pip wheel -q --no-deps -w build/wheels/c .
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pip wheel -q --no-deps --no-cache-dir -w build/wheels/pure .
	$(PY) scripts/check_wheels.py build/wheels/c build/wheels/pure

dist: $(DIST_STAMP)         ## a manylinux wheel in dist/: all three extensions, libnghttp2 bundled
	rm -rf build/dist-raw dist && mkdir -p dist build
	@echo "make: building the wheel (log: build/dist.log)"
	@$(PY) -m build --wheel --outdir build/dist-raw . > build/dist.log 2>&1 || { tail -40 build/dist.log; exit 1; }
	PATH="$(abspath $(dir $(PY))):$$PATH" $(PY) -m auditwheel repair -w dist build/dist-raw/aios_fast-*.whl

dist-check: dist            ## the dist/ wheel in a fresh venv, no compiler on PATH: serves natively
	$(PY) scripts/check_dist.py dist

run: setup                  ## the main job: a local block (executor, instances, sidecars) serving traffic
	$(PY) -m aios_fast block up --ports auto --traffic 5000 --once

clean:
	rm -rf build dist *.egg-info aios_fast/*.so aios_fast/*.c .pytest_cache .hypothesis $(VENV)
