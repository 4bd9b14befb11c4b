# The worker image (ezaigent/streams): `ezstream worker --only <role>` for the Kubernetes
# Deployments of infra/k8s and the worker services of infra/docker-compose.yml.
#   docker build -t ezaigent/streams:latest .
# No JDK: the image connects to a Kafka cluster, it never starts a broker (infra/local does that).
# The inference extra (torch, CUDA) is left out: `ezstream inference-worker` needs an image with it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EZ_HOME=/var/lib/ezstream

WORKDIR /opt/ezstream
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p streams connectors infra \
    && pip install '.[stream]' \
    && pip uninstall -y ezaigent-streams
COPY schemas ./schemas
COPY connectors ./connectors
COPY streams ./streams
COPY infra ./infra
RUN pip install --no-deps -e '.[stream]' \
    && useradd --uid 10001 --user-group --no-create-home --home-dir "$EZ_HOME" ezstream \
    && mkdir -p "$EZ_HOME" && chown ezstream:ezstream "$EZ_HOME"
USER 10001
ENTRYPOINT []
CMD ["ezstream", "worker"]
