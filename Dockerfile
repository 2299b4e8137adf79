# outboxkit's image for builders that can pull python:3.11-slim: `docker build -t outboxkit:0.1.0 .`
# Without a registry, `make image` (scripts/image) builds the same image from Debian's packages.
# Both: the venv at /opt/outboxkit, uid 10001, a read-only root filesystem (mount /tmp), entrypoint
# `outboxkit`, your own code under /app (on PYTHONPATH). See "The image" in README.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The processes and both warehouses; EXTRA_REQUIREMENTS adds what your sink models need, e.g.
# --build-arg EXTRA_REQUIREMENTS="mymodels==1.4 ./wheels/other.whl" (paths relative to /src).
ARG EXTRAS=relay,sink,duckdb,postgres,dramatiq
ARG EXTRA_REQUIREMENTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wire wire
COPY runtime runtime
COPY outbox outbox
COPY relay relay
COPY sink sink
COPY verify verify
COPY jobs jobs
COPY outboxkit outboxkit
COPY scripts/image scripts/image
RUN python -m venv /opt/outboxkit \
 && /opt/outboxkit/bin/pip install --no-compile ".[${EXTRAS}]" ${EXTRA_REQUIREMENTS} \
 && /opt/outboxkit/bin/pip uninstall -q -y pip setuptools \
 # The root filesystem is read-only at run time: compile the commands' imports now, or every
 # start compiles them again (scripts/image says which, and what it costs).
 && /opt/outboxkit/bin/python scripts/image compile

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="outboxkit" \
      org.opencontainers.image.description="outboxkit's relay, sink, verify and migrate (outboxkit --help)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin outboxkit \
 && mkdir /app
COPY --from=build /opt/outboxkit /opt/outboxkit
ENV PATH=/opt/outboxkit/bin:$PATH \
    HOME=/tmp \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /app
ENTRYPOINT ["outboxkit"]
CMD ["--help"]
