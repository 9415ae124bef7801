# syntax=docker/dockerfile:1
# The gateway image: `gateway serve` configured by GATEWAY_* env vars (README "Deployment").
#   docker build -t posthog-gateway .
#   docker run -p 8000:8000 -v gateway-data:/data posthog-gateway
# The same image runs the sink worker: `docker run posthog-gateway sink --kafka-bootstrap-servers ...`.
# Optional extras: `--build-arg EXTRAS=s3` (recordings in S3), `EXTRAS=chdb` (embedded ClickHouse, ~900 MB).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a self-contained venv ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the wheel needs: a change to tests or docs does not invalidate the install layer.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed here.
ARG EXTRAS=""
RUN /opt/venv/bin/pip install --no-compile ".${EXTRAS:+[$EXTRAS]}"

# --- runtime: the venv on a clean slim image, run by an unprivileged user ---------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
# /data is created and owned here so a fresh named volume inherits the owner and is writable.
RUN groupadd --system --gid "${UID}" gateway \
    && useradd --system --uid "${UID}" --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir /data \
    && chown gateway:gateway /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_DATA_DIR=/data
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER ${UID}:${UID}
WORKDIR /data
# The durable spool: events are acknowledged once written here, so it must outlive the container.
VOLUME ["/data"]
EXPOSE 8000
# The probe follows GATEWAY_PORT and GATEWAY_TLS_CERT (https, unverified: it is our own listener).
# Python's urllib rather than curl: slim has no curl, and installing one is attack surface.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('GATEWAY_TLS_CERT')); u.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8000') + '/_liveness', timeout=2, context=ssl._create_unverified_context() if tls else None)"]
# SIGTERM (docker stop) drains in-flight requests and fsyncs the spool within --shutdown-timeout
# (30 s): give `docker stop -t` / compose stop_grace_period more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
