# The Cargohold server image.
#
#   docker build -t cargohold .
#   docker run -d -p 5000:5000 -v cargohold-data:/data \
#       -e CARGOHOLD_PUBLIC_URL=https://cargohold.example.com cargohold
#
# Two stages: "build" makes a virtualenv with the server extra from wheels (no compiler anywhere); the final
# stage is the base image plus Python and that virtualenv, runs as the unprivileged user "cargohold" (uid
# 10001) and keeps everything in the /data volume. Settings are CARGOHOLD_* variables (cargohold serve
# --help) or a config file (-v ./cargohold.toml:/etc/cargohold.toml:ro -e CARGOHOLD_SERVER_CONFIG=...).
# Behind a TLS-intercepting proxy, hand the build its CA bundle:
#   docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt -t cargohold .
# See docs/deploy.md.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/cargohold
# .dockerignore lets only pyproject.toml, README.md and src/ in.
COPY . /src
# Wheels only for dependencies: a package that would need compiling fails the build instead of growing it.
# pip and setuptools are not needed at run time; the bytecode pip compiled is kept (the server starts faster).
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
    && /opt/cargohold/bin/pip install --only-binary=:all: "/src[server]" \
    && /opt/cargohold/bin/cargohold --version \
    && /opt/cargohold/bin/pip uninstall --yes setuptools pip

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin cargohold \
    && install -d -m 0700 -o cargohold -g cargohold /data
COPY --from=build /opt/cargohold /opt/cargohold
ENV PATH=/opt/cargohold/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    CARGOHOLD_DATA_DIR=/data \
    CARGOHOLD_HOST=0.0.0.0 \
    CARGOHOLD_PORT=5000
VOLUME /data
EXPOSE 5000
USER cargohold
# A draining server answers 503, so an orchestrator stops routing to it during a restart.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "cargohold.ops.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cargohold"]
CMD ["serve"]
