# sipdlg: the proxy + MI. Built by docker-compose.yml (service "sipdlg").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY schemas ./schemas
RUN pip install . && mkdir -p /data

# SQLite dialog store (relative --db paths) lives here.
VOLUME ["/data"]
WORKDIR /data

# SIP on UDP and TCP; the MI stays on the container's loopback unless told otherwise.
EXPOSE 5060/udp 5060/tcp
CMD ["sipdlg", "serve", "--listen", "udp:0.0.0.0:5060", "--listen", "tcp:0.0.0.0:5060", \
     "--mi-listen", "127.0.0.1:8888", "--data-dir", "/data"]
