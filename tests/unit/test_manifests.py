"""The deployment manifests (infra/k8s, infra/docker-compose.yml) agree with the code.

No Kubernetes cluster is needed: the files are parsed and checked against the topic catalogue,
the worker roles, the inference worker, the OpenTelemetry Collector's pipeline and the settings;
core kinds are checked against the Kubernetes JSON schemas when ``kubernetes-validate`` is
installed, and the kustomization is built when ``kubectl`` is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from connectors.kafka.events import InferenceRequest
from connectors.kafka.topics import OTLP_SPANS, catalogue, dlq_topic, topic_name
from connectors.settings import Settings
from infra.grafana import CLICKHOUSE_TYPE
from infra.local.otelcol import collector_config
from connectors.sink import TABLES
from streams.inference.service import ready_file
from streams.inference.worker import group_id
from streams.intelligence.processor import CHUNK_BYTES, state_topic
from streams.worker import ROLES, parse_roles

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
COMPOSE = ROOT / "infra" / "docker-compose.yml"
#: Files under infra/k8s that are YAML but not manifests applied by the kustomization.
HELM_VALUES = "airflow-values.yaml"
PLACEHOLDER_SECRETS = "secrets.example.yaml"
KUSTOMIZATION = "kustomization.yaml"
IMAGE = "ezaigent/streams:latest"
#: The worker image built with the inference extra (Dockerfile, ``EXTRAS=stream,inference``).
INFERENCE_IMAGE = "ezaigent/streams-inference:latest"
INFERENCE_DEPLOYMENT = "ezstream-inference"
INFERENCE_EXTRAS = "stream,inference"
#: The workers' settings (the other ConfigMap holds the collector's configuration).
SETTINGS_CONFIGMAP = "ezstream-config"
OTELCOL = "ezstream-otelcol"
OTELCOL_IMAGE = "otel/opentelemetry-collector-contrib"
GRAFANA = "ezstream-grafana"
#: infra/grafana: the dashboards and provisioning, and the kustomization that makes ConfigMaps of them.
GRAFANA_DIR = ROOT / "infra" / "grafana"
GRAFANA_KUSTOMIZATION = "../grafana"
#: Kubernetes object names (DNS-1123 subdomain).
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in (HELM_VALUES, KUSTOMIZATION))


def _documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in _manifest_files() for doc in _load(path)]


def _of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _documents() if doc["kind"] == kind]


def _settings_configmap() -> dict:
    (config,) = [c for c in _of_kind("ConfigMap") if c["metadata"]["name"] == SETTINGS_CONFIGMAP]
    return config


def _default_settings() -> Settings:
    """The settings' declared defaults for the topic catalogue, whatever the environment says."""
    fields = ("topic_prefix", "topic_partitions", "topic_replication", "topic_retention_ms", "dlq_retention_ms")
    return Settings(**{f: Settings.model_fields[f].default for f in fields})


def _secret_env_names() -> set[str]:
    """``EZ_…`` names of every secret setting (typed SecretStr), plus the AWS alias of the S3 key."""
    names = {"AWS_SECRET_ACCESS_KEY"}
    for name, field in Settings.model_fields.items():
        if SecretStr in (field.annotation, *typing.get_args(field.annotation)):
            names.add(f"EZ_{name.upper()}")
    return names


def _walk(node, path=()):
    """Every (key path, scalar value) of a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))
    else:
        yield path, node


def test_every_yaml_file_parses():
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    assert {p.name for p in files} >= {KUSTOMIZATION, HELM_VALUES, PLACEHOLDER_SECRETS}
    for path in files:
        assert _load(path), f"{path} holds no YAML document"


def test_every_document_names_its_api_kind_and_name():
    for path, doc in _documents():
        where = f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        assert doc.get("apiVersion") and doc.get("kind"), where
        assert K8S_NAME.match(doc.get("metadata", {}).get("name") or ""), where


def test_kustomization_applies_every_manifest_but_the_placeholder_secrets():
    kustomization = _load(K8S / KUSTOMIZATION)[0]
    assert kustomization["kind"] == "Kustomization"
    # and infra/grafana's kustomization (its ConfigMaps: kustomize reads a generator's files only
    # from within the generator's folder).
    expected = {p.name for p in _manifest_files()} - {PLACEHOLDER_SECRETS} | {GRAFANA_KUSTOMIZATION}
    assert set(kustomization["resources"]) == expected
    assert not [doc for doc in _load(K8S / KUSTOMIZATION) if doc.get("secretGenerator")]


def test_topics_are_the_catalogue_and_the_alerts_state_topic():
    settings = _default_settings()
    topics = {}
    for doc in _of_kind("KafkaTopic"):
        name = doc["spec"].get("topicName", doc["metadata"]["name"])
        assert doc["metadata"]["name"] == name.replace("_", "-")
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "ezstream-kafka"
        assert name not in topics, f"topic {name} declared twice"
        topics[name] = doc["spec"]
    expected = {spec.name.removeprefix(settings.topic_prefix): spec for spec in catalogue(settings)}
    state = state_topic(settings).removeprefix(settings.topic_prefix)
    assert set(topics) == set(expected) | {state}
    for name, spec in expected.items():
        assert topics[name]["partitions"] == spec.partitions, name
        assert {k: str(v) for k, v in topics[name]["config"].items()} == spec.config, name
    assert topics[state]["partitions"] == 1
    assert topics[state]["config"]["cleanup.policy"] == "compact"
    assert int(topics[state]["config"]["max.message.bytes"]) >= 2 * CHUNK_BYTES


def test_kafka_is_kraft_with_a_scram_user():
    (kafka,) = _of_kind("Kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    pools = _of_kind("KafkaNodePool")
    assert pools and all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in pools)
    assert {"controller", "broker"} <= {role for p in pools for role in p["spec"]["roles"]}
    listeners = {entry["port"]: entry for entry in kafka["spec"]["kafka"]["listeners"]}
    config = _settings_configmap()
    (user,) = [u for u in _of_kind("KafkaUser") if u["metadata"]["name"] == config["data"]["EZ_KAFKA_SASL_USERNAME"]]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    port = int(config["data"]["EZ_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    assert listeners[port]["authentication"]["type"] == "scram-sha-512" and listeners[port]["tls"]
    assert config["data"]["EZ_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["EZ_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["data"]["EZ_KAFKA_SASL_USERNAME"] == user["metadata"]["name"]


def test_clickhouse_is_a_replicated_cluster_with_keeper():
    (chi,) = _of_kind("ClickHouseInstallation")
    (chk,) = _of_kind("ClickHouseKeeperInstallation")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"]["replicasCount"] >= 2
    keeper_hosts = {node["host"] for node in chi["spec"]["configuration"]["zookeeper"]["nodes"]}
    assert keeper_hosts == {f"keeper-{chk['metadata']['name']}"}


def _command(deployment: dict) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["command"]


def _worker_deployments() -> list[dict]:
    """Every Deployment but the inference one and the collector; each must run ``ezstream worker``
    (``_worker_role``)."""
    return [d for d in _of_kind("Deployment")
            if d["metadata"]["name"] not in (OTELCOL, GRAFANA) and _command(d)[:2] != ["ezstream", "inference-worker"]]


def _inference_deployment() -> dict:
    (deployment,) = [d for d in _of_kind("Deployment")
                     if d["metadata"]["name"] not in (OTELCOL, GRAFANA) and _command(d)[:2] == ["ezstream", "inference-worker"]]
    assert deployment["metadata"]["name"] == INFERENCE_DEPLOYMENT
    return deployment


def _worker_role(deployment: dict) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["ezstream", "worker", "--only"] and len(command) == 4, command
    roles = parse_roles(command[3])
    assert len(roles) == 1, f"{deployment['metadata']['name']}: one role per Deployment, not {roles}"
    return roles[0]


def test_one_deployment_per_worker_role():
    config = _settings_configmap()
    home = config["data"]["EZ_HOME"]
    roles = {}
    for deployment in _worker_deployments():
        role = _worker_role(deployment)
        assert role not in roles, f"two Deployments run {role}"
        roles[role] = deployment
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        ready = f"{home}/run/worker-{role}.ready"
        assert container["livenessProbe"]["exec"]["command"] == ["test", "-f", ready]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        sources = {next(iter(src.values()))["name"] for src in container["envFrom"]}
        assert sources == {config["metadata"]["name"], "ezstream-secrets"}
    assert set(roles) == set(ROLES)
    assert roles["alerts"]["spec"]["replicas"] == 2, "alerts: one active processor and one standby"


def test_scaled_objects_autoscale_the_sinks_within_the_partitions():
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    partitions = {doc["spec"]["topicName"]: doc["spec"]["partitions"] for doc in _of_kind("KafkaTopic")}
    auths = {doc["metadata"]["name"] for doc in _of_kind("TriggerAuthentication")}
    scaled = {}
    for obj in _of_kind("ScaledObject"):
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"{obj['metadata']['name']} scales a Deployment that does not exist"
        if target == INFERENCE_DEPLOYMENT:
            continue  # test_inference_scales_on_its_group_within_the_partitions
        role = _worker_role(deployments[target])
        scaled[role] = obj
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {f"ezstream.{role}"}
        topics = {t["metadata"]["topic"] for t in triggers}
        assert topics == set(TABLES), f"{role}: the triggers must watch every topic the sink reads"
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        assert obj["spec"]["maxReplicaCount"] <= min(partitions[t] for t in topics)
        assert {t["authenticationRef"]["name"] for t in triggers} <= auths
    assert set(scaled) == {"lake", "clickhouse"}, "the alerts role is not autoscaled"


def test_inference_deployment_runs_the_inference_worker_on_a_gpu():
    config = _settings_configmap()
    deployment = _inference_deployment()
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == INFERENCE_IMAGE
    # The instance (transactional id) is the pod's own name, so no two live pods share it.
    assert container["command"] == ["ezstream", "inference-worker", "--instance", "$(POD_NAME)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EZ_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ezstream-worker", "key": "password"}
    sources = {next(iter(src.values()))["name"] for src in container["envFrom"]}
    assert sources == {config["metadata"]["name"], "ezstream-secrets"}
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert container["resources"]["requests"]
    assert spec["nodeSelector"] and spec["tolerations"], "GPU pods go to GPU nodes"
    # Probes test the worker's own ready file, under the pod name; exec probes expand no $(VAR).
    home = Settings(home=config["data"]["EZ_HOME"])
    ready = str(ready_file(home, "$POD_NAME"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"] and command[2] == f'test -f "{ready}"', (probe, command)
    # Metrics like every worker: the ConfigMap's port, exposed and annotated for scraping.
    port = int(config["data"]["EZ_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port)}
    # The drain on SIGTERM (up to 120 s, InferenceWorker._drain) fits in the grace period.
    assert spec["terminationGracePeriodSeconds"] > 120
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["home"] == config["data"]["EZ_HOME"]
    assert config["data"]["EZ_KAFKA_SSL_CA_LOCATION"].startswith(mounts["kafka-ca"] + "/")
    assert {v["name"] for v in spec["volumes"]} == set(mounts)


def test_inference_scales_on_its_group_within_the_partitions():
    settings = _default_settings()
    partitions = {doc["spec"]["topicName"]: doc["spec"]["partitions"] for doc in _of_kind("KafkaTopic")}
    auths = _of_kind("TriggerAuthentication")
    (obj,) = [o for o in _of_kind("ScaledObject") if o["spec"]["scaleTargetRef"]["name"] == INFERENCE_DEPLOYMENT]
    triggers = obj["spec"]["triggers"]
    assert triggers and {t["type"] for t in triggers} == {"kafka"}
    source = topic_name(settings, InferenceRequest.TOPIC)
    assert {t["metadata"]["topic"] for t in triggers} == {source} == {"inference.requests"}
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {group_id(settings)} == {"ezstream.inference"}
    assert obj["spec"]["minReplicaCount"] == 1
    assert obj["spec"]["maxReplicaCount"] <= partitions[source]
    assert int(triggers[0]["metadata"]["lagThreshold"]) > 0
    assert {t["authenticationRef"]["name"] for t in triggers} <= {a["metadata"]["name"] for a in auths}
    # The TriggerAuthentication reads the Kafka user from a container by name: the inference
    # Deployment's container must carry that name (the variable is in the ConfigMap it reads).
    (container,) = _inference_deployment()["spec"]["template"]["spec"]["containers"]
    for auth in auths:
        for entry in auth["spec"].get("env", []):
            assert entry["containerName"] == container["name"]


def test_no_literal_secrets_outside_the_placeholder():
    secret_envs = _secret_env_names()
    files = [*_manifest_files(), K8S / HELM_VALUES]
    for path in files:
        text = path.read_text()
        # A URL with a password in it (scheme://user:password@host).
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text) or path.name == PLACEHOLDER_SECRETS, path.name
        for doc in _load(path):
            if doc.get("kind") == "Secret":
                assert path.name == PLACEHOLDER_SECRETS, f"{path.name}: Secrets belong in {PLACEHOLDER_SECRETS}"
                continue
            for keys, value in _walk(doc):
                if keys and keys[-1] in secret_envs:
                    pytest.fail(f"{path.name}: {'.'.join(keys)} holds a secret setting's value")
                if keys and keys[-1] == "name" and value in secret_envs:
                    entry = _lookup(doc, keys[:-1])
                    assert "value" not in entry, f"{path.name}: {value} is set literally, not from a Secret"
                if keys and "password" in keys[-1].lower() and isinstance(value, str):
                    # Only references to a Secret: `<secret>/<key>` (clickhouse-operator).
                    assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9.-]+", value), f"{path.name}: {'.'.join(keys)}"


def test_placeholder_secrets_say_so():
    path = K8S / PLACEHOLDER_SECRETS
    assert "PLACEHOLDER" in path.read_text().split("\n", 1)[0]
    docs = _load(path)
    assert docs and {doc["kind"] for doc in docs} == {"Secret"}
    for doc in docs:
        assert doc["metadata"]["annotations"]["ezstream/placeholder"].startswith("true")
        assert "data" not in doc, "placeholders are readable stringData"
        for key, value in doc["stringData"].items():
            assert "CHANGE-ME" in value, f"{doc['metadata']['name']}.{key} is not an obvious placeholder"
    referenced = set()
    for _, doc in _documents():
        for keys, value in _walk(doc):
            if keys[-1] == "name" and len(keys) >= 2 and keys[-2] in ("secretRef", "secretKeyRef"):
                referenced.add(value)
    generated = {u["metadata"]["name"] for u in _of_kind("KafkaUser")}  # Strimzi writes each user's password
    assert referenced - generated <= {doc["metadata"]["name"] for doc in docs}


def _lookup(node, keys):
    for key in keys:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def test_airflow_values_take_settings_from_the_config_and_secrets():
    values = _load(K8S / HELM_VALUES)[0]
    assert values["executor"] in ("KubernetesExecutor", "CeleryExecutor", "CeleryKubernetesExecutor")
    assert values["data"]["metadataSecretName"]
    assert values["config"]["core"]["dags_folder"].endswith("/airflow_dags")
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {next(iter(src.values()))["name"] for src in env_from} == {"ezstream-config", "ezstream-secrets"}


def test_worker_image_installs_the_stream_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    # The default build is the worker image; --build-arg EXTRAS=stream,inference the inference one.
    assert re.search(r"^ARG EXTRAS=stream$", instructions, re.M)
    assert instructions.count('".[${EXTRAS}]"') == 2
    assert f"--build-arg EXTRAS={INFERENCE_EXTRAS} -t {INFERENCE_IMAGE}" in dockerfile
    assert not re.search(r"jdk|jre|java", instructions, re.I), "the worker image needs no JVM"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds():
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    applied = [doc for path, doc in _documents() if path.name != PLACEHOLDER_SECRETS]
    generated = _load(GRAFANA_DIR / KUSTOMIZATION)[0]["configMapGenerator"]
    assert len(docs) == len(applied) + len(generated)
    # The Grafana Deployment mounts the generated ConfigMaps under their hashed names.
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"}
    (grafana,) = [doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == GRAFANA]
    mounted = {v["configMap"]["name"] for v in grafana["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert mounted <= names and {g["name"] for g in generated} == {m.rsplit("-", 1)[0] for m in mounted}
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"ezstream"}


def test_core_kinds_match_the_kubernetes_schemas():
    import kubernetes_validate  # the test extra: Kubernetes' OpenAPI schemas, offline
    version = kubernetes_validate.latest_version()
    core = ("Namespace", "ConfigMap", "Secret", "Deployment")
    checked = 0
    for path, doc in _documents():
        if doc["kind"] in core:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked >= 5


def test_compose_runs_a_worker_per_role():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for role in ROLES:
        service = services.get(f"worker-{role}")
        assert service, f"docker-compose.yml has no worker-{role} service"
        assert service["command"] == ["ezstream", "worker", "--only", role]
        assert service["image"] == IMAGE
        assert service["healthcheck"]["test"][-1] == f"/var/lib/ezstream/run/worker-{role}.ready"
        # Opt-in, so `up -d` still starts the services alone, as the README describes.
        assert service["profiles"] == ["workers"]
    built = [s for name, s in services.items() if s.get("build") and name != "inference"]
    assert built and all(s["image"] == IMAGE for s in built)
    assert all(not s.get("build", {}).get("args") for s in built), "the worker image is the default build"


def test_compose_runs_the_inference_worker_on_a_gpu():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    service = services["inference"]
    assert service["image"] == INFERENCE_IMAGE
    assert service["build"]["args"] == {"EXTRAS": INFERENCE_EXTRAS}
    assert service["build"]["dockerfile"] == services["topics"]["build"]["dockerfile"]
    # Its own profile: `--profile workers` must still start on a host without a GPU.
    assert service["profiles"] == ["inference"]
    assert "inference" in services["topics"]["profiles"], "the topics job runs before it"
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    # One instance name per container ($$ is compose's escape for a literal $).
    assert service["command"] == ["sh", "-c", 'exec ezstream inference-worker --instance "$$HOSTNAME"']
    ready = ready_file(Settings(home="/var/lib/ezstream"), "$$HOSTNAME")
    assert service["healthcheck"]["test"] == ["CMD-SHELL", f'test -f "{ready}"']
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert service["environment"]["EZ_KAFKA_BOOTSTRAP"] == services["worker-lake"]["environment"]["EZ_KAFKA_BOOTSTRAP"]


def _otelcol_release() -> str:
    """The collector image tag: the contrib release infra/local builds."""
    return Settings.model_fields["otel_contrib_version"].default


def test_k8s_collector_runs_the_local_pipeline_as_its_own_kafka_user():
    config = _settings_configmap()
    (collector_config_map,) = [c for c in _of_kind("ConfigMap") if c["metadata"]["name"] == OTELCOL]
    (deployment,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == OTELCOL]
    (user,) = [u for u in _of_kind("KafkaUser") if u["metadata"]["name"] == OTELCOL]
    # The workers' Kafka settings, the collector's own user: otherwise the local stack's pipeline.
    settings = Settings(**{**{key.removeprefix("EZ_").lower(): value for key, value in config["data"].items()},
                           "kafka_sasl_username": user["metadata"]["name"]})
    shipped = yaml.safe_load(collector_config_map["data"]["config.yaml"])
    assert shipped == collector_config(settings, listen_host="0.0.0.0")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == f"{OTELCOL_IMAGE}:{_otelcol_release()}"
    assert container["args"] == ["--config=/etc/otelcol/config.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EZ_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": OTELCOL, "key": "password"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"otlp-grpc": settings.otel_grpc_port, "otlp-http": settings.otel_http_port,
                     "health": settings.otel_health_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/", "port": "health"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": "/etc/otelcol", "kafka-ca": "/etc/ezstream/kafka-ca"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == OTELCOL
    assert shipped["exporters"]["kafka"]["tls"]["ca_file"].startswith(mounts["kafka-ca"] + "/")
    (service,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == OTELCOL]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in service["spec"]["ports"]} == {settings.otel_grpc_port, settings.otel_http_port}
    # Least privilege: the collector only writes its one topic.
    topic_acls = [acl for acl in user["spec"]["authorization"]["acls"] if acl["resource"]["type"] == "topic"]
    assert topic_acls == [{"resource": {"type": "topic", "name": OTLP_SPANS, "patternType": "literal"},
                           "operations": ["Describe", "Write"]}]


def test_workers_may_read_the_collectors_spans_and_write_their_dead_letters():
    config = _settings_configmap()
    (user,) = [u for u in _of_kind("KafkaUser") if u["metadata"]["name"] == config["data"]["EZ_KAFKA_SASL_USERNAME"]]
    for topic in (OTLP_SPANS, dlq_topic(OTLP_SPANS)):
        allowed = {op for acl in user["spec"]["authorization"]["acls"] if acl["resource"]["type"] == "topic"
                   and (topic == acl["resource"]["name"] if acl["resource"]["patternType"] == "literal"
                        else topic.startswith(acl["resource"]["name"])) for op in acl["operations"]}
        assert {"Describe", "Read", "Write"} <= allowed, topic


def test_compose_collector_runs_the_local_pipeline_after_its_topics():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    service = services["otelcol"]
    assert service["image"] == f"{OTELCOL_IMAGE}:{_otelcol_release()}"
    assert service["command"] == ["--config=/etc/otelcol/config.yaml"]
    (config,) = service["configs"]
    assert config["target"] == "/etc/otelcol/config.yaml"
    bootstrap = services["worker-lake"]["environment"]["EZ_KAFKA_BOOTSTRAP"]
    shipped = yaml.safe_load(compose["configs"][config["source"]]["content"])
    assert shipped == collector_config(Settings(kafka_bootstrap=bootstrap), listen_host="0.0.0.0")
    settings = _default_settings()
    assert set(service["ports"]) == {f"127.0.0.1:{p}:{p}" for p in (
        settings.otel_grpc_port, settings.otel_http_port, settings.otel_health_port)}
    # Not in a profile: `up -d` starts it with the services; its topics exist before it writes.
    assert "profiles" not in service
    assert service["depends_on"] == {"otlp-topics": {"condition": "service_completed_successfully"}}
    script = " ".join(services["otlp-topics"]["entrypoint"])
    commands = [c.split() for c in script.split("&&")]
    specs = {spec.name: spec for spec in catalogue(settings)}
    made = {}
    for argv in commands:
        assert f"--bootstrap-server {bootstrap}" in " ".join(argv) and "--if-not-exists" in argv
        topic = argv[argv.index("--topic") + 1]
        configs = dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == "--config")
        made[topic] = (int(argv[argv.index("--partitions") + 1]), configs)
    expected = {OTLP_SPANS, dlq_topic(OTLP_SPANS)}
    assert set(made) == expected
    for topic in expected:
        assert made[topic] == (specs[topic].partitions, specs[topic].config), topic


def _grafana_datasource_variables() -> set[str]:
    """The environment variables Grafana's data-source provisioning reads (``${NAME}``)."""
    text = (GRAFANA_DIR / "provisioning" / "datasources" / "ezstream.yaml").read_text()
    return set(re.findall(r"\$\{(\w+)\}", re.sub(r"(?m)^\s*#.*$", "", text)))


def _grafana_provider_path() -> str:
    (provider,) = _load(GRAFANA_DIR / "provisioning" / "dashboards" / "ezstream.yaml")[0]["providers"]
    return provider["options"]["path"]


#: An entry of Grafana's plugins.preinstall_sync list: ``id@version`` (``@url`` may follow).
PREINSTALL_ENTRY = re.compile(r"(?P<id>[a-z0-9]+(?:-[a-z0-9]+)*)@(?P<version>\d+\.\d+\.\d+)")


def _preinstalled(setting: str) -> dict[str, str]:
    """Plugin id -> version of a GF_PLUGINS_PREINSTALL_SYNC value, each entry pinned to a version;
    AssertionError names an entry that is not (an id alone is kept up to date by Grafana, and the
    ``id version`` form of the deprecated GF_INSTALL_PLUGINS would be read as an id with a space)."""
    pinned = {}
    for entry in setting.split(","):
        match = PREINSTALL_ENTRY.fullmatch(entry.strip())
        assert match, f"{entry!r} is not id@version"
        pinned[match["id"]] = match["version"]
    return pinned


def _pinned_grafana(image: str, environment: dict[str, str]) -> None:
    """Grafana 12 and its ClickHouse plugin pinned, installed before the server starts."""
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", image), image
    assert not {"GF_INSTALL_PLUGINS", "GF_PLUGINS_PREINSTALL"} & set(environment), "use GF_PLUGINS_PREINSTALL_SYNC"
    assert set(_preinstalled(environment["GF_PLUGINS_PREINSTALL_SYNC"])) == {CLICKHOUSE_TYPE}


def test_the_plugin_check_refuses_unpinned_and_deprecated_forms():
    assert _preinstalled("grafana-clickhouse-datasource@4.11.2, grafana-clock-panel@1.0.1") == {
        "grafana-clickhouse-datasource": "4.11.2", "grafana-clock-panel": "1.0.1"}
    for wrong in ("grafana-clickhouse-datasource", "grafana-clickhouse-datasource 4.11.2",
                  "grafana-clickhouse-datasource@latest", "grafana-clickhouse-datasource@4.11"):
        with pytest.raises(AssertionError, match="is not id@version"):
            _preinstalled(wrong)


def test_compose_runs_grafana_and_prometheus_in_their_profile():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    # Opt-in: `up -d` starts what it did; `--profile grafana up -d` adds both.
    assert grafana["profiles"] == prometheus["profiles"] == ["grafana"]
    env = grafana["environment"]
    _pinned_grafana(grafana["image"], env)
    assert _grafana_datasource_variables() <= set(env)
    assert env["CLICKHOUSE_DATABASE"] == Settings.model_fields["clickhouse_database"].default
    dsn = services["worker-clickhouse"]["environment"]["EZ_CLICKHOUSE_DSN"]
    assert f"://{env['CLICKHOUSE_USER']}:{env['CLICKHOUSE_PASSWORD']}@{env['CLICKHOUSE_HOST']}:" \
           f"{env['CLICKHOUSE_PORT']}/" in dsn
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts[_grafana_provider_path()] == "./grafana/dashboards"
    assert (COMPOSE.parent / "grafana" / "dashboards").is_dir()
    # Prometheus scrapes every worker service on the port the workers serve their metrics on.
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    (config,) = prometheus["configs"]
    scrape = yaml.safe_load(compose["configs"][config["source"]]["content"])
    (job,) = scrape["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    workers = {name for name, s in services.items() if s.get("image") in (IMAGE, INFERENCE_IMAGE) and "command" in s
               and name != "topics"}
    assert set(discovery["names"]) == workers
    port = {int(services[name]["environment"]["EZ_METRICS_PORT"]) for name in workers}
    assert port == {discovery["port"]}
    assert {services[name]["environment"]["EZ_METRICS_HOST"] for name in workers} == {"0.0.0.0"}


def test_k8s_grafana_mounts_the_generated_configmaps():
    config = _settings_configmap()
    (deployment,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == GRAFANA]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    compose_grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    # The same Grafana and plugin as docker-compose.
    assert container["image"] == compose_grafana["image"]
    _pinned_grafana(container["image"], {name: e.get("value", "") for name, e in env.items()})
    assert env["GF_PLUGINS_PREINSTALL_SYNC"]["value"] == compose_grafana["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert _grafana_datasource_variables() <= set(env)
    assert env["CLICKHOUSE_DATABASE"]["value"] == config["data"]["EZ_CLICKHOUSE_DATABASE"]
    assert env["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ezstream-clickhouse", "key": "password"}
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == GRAFANA
    # The ConfigMaps infra/grafana/kustomization.yaml generates, mounted where the provisioning looks.
    generated = {g["name"]: g["files"] for g in _load(GRAFANA_DIR / KUSTOMIZATION)[0]["configMapGenerator"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    by_map = {v["configMap"]["name"]: name for name, v in volumes.items() if "configMap" in v}
    assert set(by_map) == set(generated)
    assert mounts[by_map["ezstream-grafana-dashboards"]] == _grafana_provider_path()
    assert mounts[by_map["ezstream-grafana-provisioning"]] == "/etc/grafana/provisioning"
    items = {i["key"]: i["path"] for i in volumes[by_map["ezstream-grafana-provisioning"]]["configMap"]["items"]}
    keys = dict(entry.split("=", 1) for entry in generated["ezstream-grafana-provisioning"])
    assert {key: f"provisioning/{path}" for key, path in items.items()} == keys
    for files in generated.values():
        for entry in files:
            assert (GRAFANA_DIR / entry.split("=")[-1]).is_file(), entry
    (service,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == GRAFANA]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/health"
