# syntax=docker/dockerfile:1
#
# cycles-events: webhook dispatcher of the Cycles budget stack.
#
#   docker build -t cycles-events .
#   docker run --rm -e REDIS_HOST=redis cycles-events
#
# Two stages: the builder turns the package and all its dependencies into wheels;
# the runtime stage installs those wheels only (no compiler, no build tools, no pip
# cache) and runs as an unprivileged user. tests/integration/test_dockerfile.py lints
# this file with hadolint and replays its pip steps in a throwaway venv.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler is only needed when a dependency has no prebuilt wheel for the target
# platform (hiredis, cryptography, aiohttp ship wheels for amd64 and arm64). Debian
# security updates replace exact versions, so apt packages are not pinned here; this
# stage is thrown away and never shipped.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore admits only pyproject.toml, README.md, LICENSE and cycles_events/.
COPY . /src
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="cycles-events" \
      org.opencontainers.image.description="Webhook dispatcher for the Cycles budget stack (drop-in for cycles-server-events)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MANAGEMENT_PORT=9980

# Fixed numeric ids so that Kubernetes runAsNonRoot can verify the user.
RUN groupadd --system --gid 10001 cycles \
    && useradd --system --uid 10001 --gid cycles --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cycles

# The wheels are bind-mounted from the builder, so they never become a layer here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && python -m pip check

USER 10001:10001

# 9980: management (health probes, /actuator/prometheus); internal only.
# 7980: the "traffic" port of cycles-server-events. Unused: this service only makes
#       outbound calls (Redis, webhook receivers), nothing listens on 7980. Exposed
#       for drop-in parity with the Java image.
EXPOSE 9980 7980

HEALTHCHECK --interval=30s --start-period=60s --retries=5 CMD ["cycles-events","healthcheck"]

# Exec form: the Python process is PID 1 and receives SIGTERM itself. On SIGTERM it
# turns readiness DOWN, lets in-flight deliveries finish (SHUTDOWN_GRACE_SECONDS, 25)
# and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cycles-events"]
CMD ["run"]
