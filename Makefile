# aios-fast developer tasks. Everything runs in a project-local virtual environment,
# .venv, made with python3 (Debian/Ubuntu: apt-get install python3-venv), so nothing
# touches the system's packages (PEP 668). PY=/path/to/python uses that interpreter
# instead, as it is (no venv).
VENV ?= .venv
PYTHON3 ?= python3
ifdef PY
STAMP = build/.installed-$(notdir $(PY))
else
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed
endif
PIP = $(PY) -m pip install --disable-pip-version-check --progress-bar off
# What a (re)install depends on: change one of these and `make setup` installs again.
SOURCES = pyproject.toml setup.py setup_modules.py $(wildcard native/aios_fast/*.pyx native/aios_fast/*.pxd)

.PHONY: setup compile test test-fast test-compiled test-pure bench lint build-check run clean

setup: $(STAMP)             ## install the package (compiling native/) and the test tools, once

$(VENV)/bin/python:
	@echo "make: creating $(VENV) with $(PYTHON3)"
	@$(PYTHON3) -m venv $(VENV) || { echo "make: cannot create $(VENV): install python3-venv (apt-get install python3-venv), or run with PY=/path/to/python"; exit 1; }

$(STAMP): $(SOURCES) | $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/bin/python)
	@mkdir -p $(dir $(STAMP))
	@echo "make: installing build tools and aios-fast[test] into $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV),$(PY)) (compiling native/; a minute or two the first time)"
	$(PIP) -q 'pip>=23' 'setuptools>=77' 'Cython>=3.1' wheel
	$(PIP) -e '.[test]'
	@touch $(STAMP)

compile: setup              ## rebuild the Cython extensions in place
	$(PY) setup.py -q build_ext --inplace

test: setup                 ## README's test command: the suite compiled, then pure-Python
	$(MAKE) test-compiled
	$(MAKE) test-pure TWINS_TESTED=1

test-fast: setup            ## the unit layer only: in process, no sockets, no slow property runs
	$(PY) -m pytest -q -m "not integration and not slow"

test-compiled:
	$(PY) -m pytest -q

# Suites that never touch the extensions run once, in the compiled pass: the registry never
# imports aios_fast (tests/registry/test_layout.py checks it); layout and protos read source.
ONCE = --ignore=tests/registry --ignore=tests/test_layout.py --ignore=tests/test_protos.py
# These test the twins side by side, by module (never through the selector): the compiled
# pass already ran their pure-Python half, so after it (make test) they are not repeated.
TWIN_ONLY = --ignore=tests/test_codec_differential.py --ignore=tests/test_codec_immutable.py \
	--ignore=tests/test_codec_gc.py --ignore=tests/test_lb_shares.py --ignore=tests/test_lb_bounded.py

test-pure:                  ## the suite on the pure-Python twins (AIOS_FAST_NO_EXTENSIONS=1)
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pytest -q $(ONCE) $(if $(TWINS_TESTED),$(TWIN_ONLY))

bench: setup                ## benchmarks; updates bench/RESULTS.md
	$(PY) -m bench.codec --write
	$(PY) -m bench.lb --write
	$(PY) -m bench.executor --write
	$(PY) -m bench.faults --write
	$(PY) -m bench.front --write
	$(PY) -m bench.batching --write
	$(PY) -m bench.registry_filter --write
	$(PY) -m bench.registry_http --write
	$(PY) -m pytest bench -q --benchmark-enable --benchmark-max-time=0.5

lint: setup                 ## ruff and the generated-protobuf currency check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/gen_protos.py --check

build-check: setup          ## wheels: compiled one carries the .so files, pure one none
	rm -rf build/wheels && mkdir -p build/wheels/c build/wheels/pure
	$(PY) -m pip wheel -q --no-deps -w build/wheels/c .
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pip wheel -q --no-deps --no-cache-dir -w build/wheels/pure .
	$(PY) scripts/check_wheels.py build/wheels/c build/wheels/pure

run: setup                  ## the main job: a local block (executor, instances, sidecars) serving traffic
	$(PY) -m aios_fast block up --ports auto --traffic 5000 --once

clean:
	rm -rf build dist *.egg-info aios_fast/*.so aios_fast/*.c .pytest_cache .hypothesis $(VENV)
