"""CLI commands that need no services."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from connectors.kafka.schemas import SCHEMAS_DIR
from streams.cli import cli


def test_schemas_check_passes_on_the_repository_schemas():
    result = CliRunner().invoke(cli, ["schemas", "check"])
    assert result.exit_code == 0, result.output
    assert "compatible" in result.output


def test_schemas_check_fails_naming_the_field_of_an_incompatible_version(tmp_path, monkeypatch):
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, schemas)
    v1 = json.loads((schemas / "telemetry" / "v1.avsc").read_text())
    v1["fields"].append({"name": "gpu_percent", "type": "double", "doc": "GPU use, no default."})
    (schemas / "telemetry" / "v2.avsc").write_text(json.dumps(v1))
    from connectors.kafka import compat

    real_check_all = compat.check_all
    monkeypatch.setattr(compat, "check_all", lambda: real_check_all(schemas))
    result = CliRunner().invoke(cli, ["schemas", "check"])
    assert result.exit_code == 1
    assert "telemetry v1 -> v2" in result.output and "gpu_percent" in result.output


def test_schemas_list_names_every_event_and_topic():
    result = CliRunner().invoke(cli, ["schemas", "list"])
    assert result.exit_code == 0
    for event, topic in [("task_event", "agent.tasks"), ("llm_call", "agent.llm_calls"),
                         ("telemetry", "agent.telemetry"), ("alert", "agent.alerts")]:
        assert any(line.split()[:2] == [event, topic] for line in result.output.splitlines())


def test_schemas_codegen_reports_up_to_date():
    result = CliRunner().invoke(cli, ["schemas", "codegen"])
    assert result.exit_code == 0
    assert result.output.strip().endswith("up to date")
    assert Path(result.output.split(":")[0]).name == "events.py"
