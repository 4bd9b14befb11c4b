"""Grafana for production: the dashboards, generated with grafana-foundation-sdk, and their checks.

``python -m infra.grafana`` writes ``infra/grafana/dashboards/*.json`` from :mod:`.dashboards`
(``--check`` only compares); Grafana reads them through the provisioning files of
``infra/grafana/provisioning/`` (docker-compose's ``grafana`` profile, and on Kubernetes the
ConfigMaps that ``infra/grafana/kustomization.yaml`` generates for ``infra/k8s/grafana.yaml``).
The panels query two data sources, named by the uids below in both the dashboards and the
provisioning: ClickHouse (the grafana-clickhouse-datasource plugin) over the tables of
``connectors/clickhouse/migrations/``, and Prometheus over the workers' ``ezstream_*`` metrics
(``streams/metrics.py``). Generating needs the ``test`` extra (grafana-foundation-sdk); the
workers never import this package. :mod:`.checks` checks what the panels query and the SDK's
model, :mod:`.schema` Grafana's own published schema (``@grafana/schema``, with TypeScript).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The dashboards' JSON files, one per dashboard (its uid is the file's stem).
DASHBOARDS_DIR = HERE / "dashboards"
#: Grafana's provisioning folder: ``datasources/`` and ``dashboards/`` (the file provider).
PROVISIONING_DIR = HERE / "provisioning"

#: The ClickHouse data source: its plugin's type id and the uid the provisioning gives it.
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
CLICKHOUSE_UID = "ezstream-clickhouse"
#: The Prometheus data source that scrapes the workers' ``/metrics``.
PROMETHEUS_TYPE = "prometheus"
PROMETHEUS_UID = "ezstream-prometheus"
