# aios-fast: one image for every process of a block (executor, instances, sidecars).
#   docker build -t aios-fast:latest .
#   aios-fast block manifests block.json --image aios-fast:latest | kubectl apply -f -
# Stage 1 compiles the Cython extensions with the same build tools `make setup` installs
# (see the Makefile's PIP lines; tests/test_kubernetes.py checks they stay the same) and
# makes wheels of aios-fast[kube] and its dependencies; stage 2 installs only those
# wheels into a slim image and runs as a non-root user.
# The base is pinned to a Debian release (bookworm): the apt packages below, and the
# libnghttp2 the native front links, are that release's.
ARG PYTHON=3.11
ARG DEBIAN=bookworm

FROM python:${PYTHON}-slim-${DEBIAN} AS build
# gcc and libc6-dev: the compiler Cython's output needs (as CI's `cc`); libnghttp2-dev:
# the executor's native gRPC front (as .ci/run); the base image's Debian release fixes
# their versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# the build tools, exactly as `make setup` pins them (ranges, not versions)
# hadolint ignore=DL3013
RUN python -m pip install --disable-pip-version-check --progress-bar off --no-cache-dir -q 'pip>=23' 'setuptools>=77' 'Cython>=3.1' wheel
COPY pyproject.toml setup.py setup_modules.py MANIFEST.in README.md ./
COPY native/ native/
COPY aios_fast/ aios_fast/
COPY registry_server/ registry_server/
COPY protos/ protos/
RUN python -m pip wheel --disable-pip-version-check --progress-bar off --no-cache-dir -q -w /wheels '.[kube]' \
    && python -c "import sys, zipfile, glob; w = glob.glob('/wheels/aios_fast-*.whl')[0]; names = zipfile.ZipFile(w).namelist(); sys.exit(0 if any(n.startswith('aios_fast/_front.') for n in names) else 'no native front in ' + w)"

FROM python:${PYTHON}-slim-${DEBIAN}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="aios-fast" \
      org.opencontainers.image.description="The AIOSv1 block data plane: executor, instances, sidecars, registry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:${PYTHON}-slim-${DEBIAN}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# libnghttp2-14: the native front's shared library; --no-index: only the wheels built
# above, whose versions stage 1 fixed
# hadolint ignore=DL3008,DL3013
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip install --disable-pip-version-check --no-cache-dir --no-index --find-links /wheels 'aios-fast[kube]' \
    && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin aios
USER 10001
WORKDIR /tmp
EXPOSE 50051 18000 18001 50061 18061 10000 19001
# Outside Kubernetes (which uses its own probes): the process's GET /health on
# AIOS_FAST_HEALTH_PORT (18001: the executor's and an instance's management port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["aios-fast", "probe"]
ENTRYPOINT ["aios-fast"]
CMD ["--help"]
