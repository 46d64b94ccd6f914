# sipdlg: the proxy + MI, its engine compiled with mypyc. Built by docker-compose.yml
# (service "sipdlg"); docs/operations.md has the details.

# -- build: compile the engine (needs a C compiler, which the final image does without) ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY schemas ./schemas
COPY scripts/compile.py ./scripts/compile.py
# A failed compile fails the build: this image promises the compiled engine.
RUN pip install -q ".[native]" && python scripts/compile.py

# -- run ---------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The compiled engine shadows the pure-Python one installed with the package.
    PYTHONPATH=/opt/sipdlg-native

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY schemas ./schemas
RUN pip install -q . && mkdir -p /data
COPY --from=build /src/build/native/engine /opt/sipdlg-native/engine
COPY docker/entrypoint.sh /usr/local/bin/sipdlg-entrypoint
# Fails the build if the compiled engine is not the one that loads.
RUN sipdlg --version | tee /dev/stderr | grep -q "compiled engine"

# SQLite dialog store (relative --db paths) lives here.
VOLUME ["/data"]
WORKDIR /data

# SIP on UDP and TCP on every address, advertised as the container's IP unless SIPDLG_LISTEN
# says otherwise (docker/entrypoint.sh); the MI stays on the container's loopback.
EXPOSE 5060/udp 5060/tcp
# Ready = SIP sockets bound, MI up, dialog store up (GET /health on the MI).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["sipdlg", "health"]
ENTRYPOINT ["sipdlg-entrypoint"]
CMD ["sipdlg", "serve", "--mi-listen", "127.0.0.1:8888", "--data-dir", "/data"]
