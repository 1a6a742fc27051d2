# aios-fast developer tasks. PY selects the interpreter (default: python3).
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup compile test test-compiled test-pure bench lint build-check run clean

setup:                      ## install the package (compiling native/) and the test tools
	$(PIP) -e '.[test]'

compile:                    ## rebuild the Cython extensions in place
	$(PY) setup.py -q build_ext --inplace

test: setup                 ## README's test command: the suite compiled, then pure-Python
	$(MAKE) test-compiled test-pure

test-compiled:
	$(PY) -m pytest -q

test-pure:                  ## the suite on the pure-Python twins (AIOS_FAST_NO_EXTENSIONS=1)
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pytest -q

bench: setup                ## benchmarks; updates bench/RESULTS.md
	$(PY) -m bench.codec --write
	$(PY) -m bench.lb --write
	$(PY) -m bench.executor --write
	$(PY) -m bench.registry_filter --write
	$(PY) -m bench.registry_http --write
	$(PY) -m pytest bench -q --benchmark-enable --benchmark-max-time=0.5

lint:                       ## ruff and the generated-protobuf currency check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/gen_protos.py --check

build-check:                ## wheels: compiled one carries the .so files, pure one none
	rm -rf build/wheels && mkdir -p build/wheels/c build/wheels/pure
	$(PY) -m pip wheel -q --no-deps -w build/wheels/c .
	AIOS_FAST_NO_EXTENSIONS=1 $(PY) -m pip wheel -q --no-deps --no-cache-dir -w build/wheels/pure .
	$(PY) scripts/check_wheels.py build/wheels/c build/wheels/pure

run: setup                  ## the main job: a local block (executor, instances, sidecars) serving traffic
	$(PY) -m aios_fast block up --ports auto --traffic 5000 --once

clean:
	rm -rf build dist *.egg-info aios_fast/*.so aios_fast/*.c .pytest_cache .hypothesis
