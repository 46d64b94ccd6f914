# SIPp (Debian package sip-tester) for the demo UAS/UAC in docker-compose.yml.
FROM debian:12-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends sip-tester \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["sipp"]
