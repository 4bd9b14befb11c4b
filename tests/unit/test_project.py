"""The project's own promises: README commands and settings table, CI script, compose file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from connectors.settings import describe_settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_settings_table_is_current():
    from click.testing import CliRunner

    from streams.cli import cli

    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- settings:start[^>]*-->\n(.*?)<!-- settings:end -->", readme, re.S).group(1)
    generated = CliRunner().invoke(cli, ["settings", "--markdown"]).output
    assert table == generated, "regenerate with: ezstream settings --markdown"
    assert all(f"`{name}`" in table for name, _, _ in describe_settings())


def test_ci_runs_the_readme_test_command_and_fails_on_errors():
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert re.search(r"^make test$", script, re.M)


def test_compose_file_has_the_same_stack():
    compose = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "minio", "minio-init", "clickhouse", "airflow"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "mb --ignore-existing local/ezstream-lake" in services["minio-init"]["entrypoint"]
    for name in ("kafka", "minio", "clickhouse"):
        assert "healthcheck" in services[name], name


def test_readme_json_lines_example_is_a_valid_event():
    import json

    from connectors.kafka.codec import decode, encode
    from connectors.kafka.events import LlmCall

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<<'JSON'\n(.*?)\nJSON\n", readme, re.S).group(1)
    for line in block.splitlines():
        obj = json.loads(line)
        obj.pop("event_time")
        event = LlmCall(**obj)
        assert decode(encode(event.EVENT, event.to_record()))[1]["call_id"] == obj["call_id"]
