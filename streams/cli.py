"""The ``ezstream`` command line.

Imports stay light at the top: each command imports what it needs, so ``ezstream status`` does not
load the stream-processing stack.
"""

from __future__ import annotations

import json
import sys

import click

from connectors.errors import ConfigError, EzStreamError
from connectors.settings import Settings, load_settings


def _settings() -> Settings:
    return load_settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """EzAigent Streams: Kafka -> stream processors -> Delta lake + ClickHouse."""


@cli.command()
def up() -> None:
    """Start the local stack (Kafka, MinIO, the OpenTelemetry Collector; ClickHouse is embedded). Idempotent."""
    from infra.local import Stack

    Stack(_settings()).up(echo=click.echo)


@cli.command()
def down() -> None:
    """Stop the background workers and what `ezstream up` started for this EZ_HOME, nothing else."""
    from infra.local import Stack
    from streams.worker import stop_detached

    settings = _settings()
    for name in stop_detached(settings):
        click.echo(f"{name:<11} stopped")
    Stack(settings).down(echo=click.echo)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(as_json: bool) -> None:
    """Services, the dashboard, workers, consumer lag per group and topic, last writes, DLQ sizes,
    the alerts role; exit 1 if a service is down (not for the dashboard, which runs on demand)."""
    from streams.operator_status import format_view, operator_view

    view = operator_view(_settings())
    click.echo(json.dumps(view, indent=2) if as_json else format_view(view))
    if not all(service["healthy"] for service in view["services"]):
        sys.exit(1)


@cli.command()
def dashboard() -> None:
    """Start the live dashboard (Streamlit) on 127.0.0.1:EZ_DASHBOARD_PORT in the background: spend,
    budgets and forecasts, alerts, LLM latency and errors, tasks, consumer lag and DLQs, model
    recommendations. Idempotent; `ezstream down` stops it."""
    from infra.local.dashboard import Dashboard

    board = Dashboard(_settings())
    outcome = board.up()
    click.echo(f"dashboard   {board.url}  {outcome}; log: {board.proc.log_file}; stop: ezstream down")


_FETCHED = ("kafka", "minio", "otelcol", "grafana-schema")


@cli.command()
@click.argument("what", nargs=-1, type=click.Choice(_FETCHED))
def fetch(what: tuple[str, ...]) -> None:
    """Download/build into the cache, without starting anything, WHAT (default: all): the local
    services (Kafka jars, MinIO, the OpenTelemetry Collector) and grafana-schema, Grafana's
    published schema and the TypeScript compiler the dashboards are checked with (npm ci)."""
    from infra.grafana.schema import install as install_grafana_schema
    from infra.local import Stack

    settings = _settings()
    stack = Stack(settings)
    fetched = {
        "kafka": ("kafka jars", stack.kafka.libs),
        "minio": ("minio", stack.minio.binary),
        "otelcol": ("otelcol", stack.otelcol.binary),
        "grafana-schema": ("grafana schema", lambda: install_grafana_schema(settings.cache_dir)),
    }
    for name in what or _FETCHED:
        label, get = fetched[name]
        click.echo(f"{label:<14} {get()}")


@cli.group()
def topics() -> None:
    """Create, list and describe the project's topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every topic of the catalogue (and each .dlq) that is missing. Idempotent."""
    from connectors.kafka.connect import check_connection
    from connectors.kafka.topics import catalogue, ensure_topics

    settings = _settings()
    check_connection(settings)
    for name, outcome in ensure_topics(settings, catalogue(settings)).items():
        click.echo(f"{name:<28} {outcome}")


@topics.command("list")
def topics_list() -> None:
    """List the topics on the broker (internal ones left out)."""
    from connectors.kafka.topics import describe_topics

    for row in describe_topics(_settings()):
        click.echo(row["topic"])


@topics.command("describe")
@click.argument("names", nargs=-1)
def topics_describe(names: tuple[str, ...]) -> None:
    """Partitions, replication, cleanup policy and retention of NAMES (default: all)."""
    from connectors.kafka.topics import describe_topics

    click.echo(f"{'TOPIC':<28} {'PARTITIONS':>10} {'REPLICAS':>8}  {'CLEANUP':<8} RETENTION_MS")
    for row in describe_topics(_settings(), list(names) or None):
        click.echo(
            f"{row['topic']:<28} {row['partitions']:>10} {row['replication']:>8}  "
            f"{row.get('cleanup.policy', ''):<8} {row.get('retention.ms', '')}"
        )


@cli.group()
def schemas() -> None:
    """Event schemas: list versions, check compatibility, regenerate the typed events."""


@schemas.command("list")
def schemas_list() -> None:
    """Each event with its versions and the fingerprint of each."""
    from connectors.kafka.schemas import TOPIC_EVENTS, default_registry

    registry = default_registry()
    topics = {event: topic for topic, event in TOPIC_EVENTS.items()}
    click.echo(f"{'EVENT':<20} {'TOPIC':<20} {'VERSION':>7}  FINGERPRINT (CRC-64-AVRO, LE)")
    for event in registry.events:
        for version in registry.versions(event):
            schema = registry.get(event, version)
            click.echo(f"{event:<20} {topics.get(event, ''):<20} {version:>7}  {schema.fingerprint.hex()}")


@schemas.command("check")
def schemas_check() -> None:
    """Prove every version is backward and forward compatible with the previous one, and that the
    ClickHouse migrations make a column for every field of the current versions (applied to a
    scratch embedded engine; no ClickHouse needs to run)."""
    from connectors.clickhouse import schema_check
    from connectors.kafka.compat import check_all, format_report

    problems = check_all()
    click.echo(format_report(problems))
    gaps = schema_check.check_migrations()
    click.echo(schema_check.format_gaps(gaps))
    if problems or gaps:
        sys.exit(1)


@schemas.command("codegen")
def schemas_codegen() -> None:
    """Regenerate connectors/kafka/events.py (typed events) from the current schemas."""
    from connectors.kafka import codegen

    changed = codegen.write()
    click.echo(f"{codegen.EVENTS_MODULE}: {'rewritten' if changed else 'up to date'}")


@cli.command()
@click.option("--topic", required=True, help="Catalogue topic, e.g. agent.llm_calls.")
@click.argument("source", type=click.File("r"))
def produce(topic: str, source) -> None:
    """Send SOURCE (JSON lines, or - for stdin) as validated Avro events to TOPIC.

    A bad line is reported with its number and reason and the good lines still go; the exit
    code is 1 when some lines were rejected.
    """
    from connectors.kafka.jsonl import produce_jsonl
    from connectors.kafka.producer import EventProducer

    from connectors.kafka.connect import check_connection

    settings = _settings()
    check_connection(settings)
    with EventProducer(settings) as producer:
        report = produce_jsonl(producer, topic, source)
    for number, reason in report.rejected:
        click.echo(f"line {number}: {reason}", err=True)
    click.echo(f"{producer.topic_for(producer.codec.registry.event_for_topic(topic))}: "
               f"sent {report.sent}, delivered {sum(producer.delivered.values())}, "
               f"rejected {len(report.rejected)}")
    if report.rejected:
        sys.exit(1)


@cli.command()
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Simulated events per second.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds of traffic.")
@click.option("--seed", type=int, default=None,
              help="Seed of the simulated fleet (default: a new one per run, so ids never repeat).")
def demo(rate: float, duration: float, seed: int | None) -> None:
    """The whole pipeline locally: stack, topics, workers, a minute of traffic, matching totals."""
    import time

    from streams.demo import run_demo

    if seed is None:
        seed = int(time.time())

    if not run_demo(rate, duration, seed, echo=click.echo):
        click.echo("the lake and ClickHouse totals differ: see the worker log", err=True)
        sys.exit(1)


@cli.command()
@click.option("--rate", type=float, default=1000.0, show_default=True,
              help="Events per second (0: as fast as the broker takes them).")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same events.")
@click.option("--agents", help="Fleet, e.g. development=10,content=5,enterprise=8,research=15 (the default).")
def simulate(rate: float, duration: float, seed: int, agents: str | None) -> None:
    """Send realistic agent traffic (tasks, LLM calls, telemetry) from a simulated fleet."""
    from streams.simulate import format_report, parse_fleet, run_simulation

    from connectors.kafka.connect import check_connection

    fleet = parse_fleet(agents) if agents else None
    settings = _settings()
    check_connection(settings)
    report = run_simulation(settings, rate=rate, duration_s=duration, seed=seed, fleet=fleet)
    click.echo(format_report(report))
    if not report.ok:
        if report.error:
            click.echo(f"error: {report.error}", err=True)
        sys.exit(1)


@cli.group(invoke_without_command=True)
@click.option("--version", "version", help="Price table version (default: the latest).")
@click.option("--provider", help="Only this provider's models (an event's name, e.g. openai, or other).")
@click.pass_context
def prices(ctx: click.Context, version: str | None, provider: str | None) -> None:
    """Show the price table costs are computed with (USD per 1,000,000 tokens), EZ_PRICES_FILE
    overrides applied; `prices update` makes a new version."""
    if ctx.invoked_subcommand is not None:
        return
    from connectors.pricing import load_prices

    table = load_prices(_settings(), version)
    rows = table.rows(provider)
    click.echo(f"price table {table.version}: {len(rows)} models; USD per 1,000,000 tokens; "
               f"tiers: rates of a call with more input tokens than the threshold")
    click.echo(f"{'provider':<11} {'model':<40} {'input':>8} {'output':>8} {'cache rd':>8} {'cache wr':>8} "
               f"{'reason':>8}  tiers / source")
    for row in rows:
        tiers = "; ".join(f">{t.above_input_tokens:,}: {t.input_usd_per_mtok:g}/{t.output_usd_per_mtok:g}"
                          for t in row.tiers)
        click.echo(f"{row.provider:<11} {row.model:<40} {row.input_usd_per_mtok:>8g} {row.output_usd_per_mtok:>8g} "
                   f"{row.cache_read_usd_per_mtok:>8g} {row.cache_write_usd_per_mtok:>8g} "
                   f"{row.reasoning_usd_per_mtok:>8g}  {tiers or row.source}")


@prices.command("update")
@click.option("--date", "version", default=None, help="Version of the new table, YYYY-MM-DD (default: today, UTC).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None,
              help="Folder of the price tables (default: the package's price_tables/).")
def prices_update(version: str | None, folder: str | None) -> None:
    """Write a new price table version from the installed genai-prices and the supplement, and
    print what changed since the latest version (nothing is written when nothing changed)."""
    from datetime import datetime, timezone
    from pathlib import Path

    from connectors.pricing import PRICE_TABLES_DIR
    from connectors.pricing.update import update

    version = version or datetime.now(timezone.utc).date().isoformat()
    click.echo(update(version, Path(folder) if folder else PRICE_TABLES_DIR).report())


@cli.command()
@click.option("--only", help="Comma-separated roles to run (default: all): lake, clickhouse.")
@click.option("--detach", is_flag=True, help="Run in the background; `ezstream down` stops it.")
@click.option("--home", type=click.Path(file_okay=False), help="EZ_HOME for this worker (overrides the env).")
@click.option("--loglevel", "-l", default="info", type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def worker(only: str | None, detach: bool, home: str | None, loglevel: str) -> None:
    """Run the stream processors: validate, dead-letter, write the lake and ClickHouse."""
    from streams.worker import parse_roles, run_worker, start_detached

    settings = load_settings(home=home) if home else _settings()
    roles = parse_roles(only)
    if detach:
        outcome = start_detached(settings, roles)
        click.echo(f"worker ({', '.join(roles)}) {outcome}; log: {settings.logs_dir}/worker-{'-'.join(roles)}.log")
        return
    run_worker(settings, roles, loglevel=loglevel)


@cli.command("inference-worker")
@click.option("--instance", help="Stable name of this worker (e.g. the pod name): a restart under the same "
              "name aborts its predecessor's open transaction at once. Default: a random name.")
@click.option("--home", type=click.Path(file_okay=False), help="EZ_HOME for this worker (overrides the env).")
@click.option("--loglevel", "-l", default="info", type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def inference_worker(instance: str | None, home: str | None, loglevel: str) -> None:
    """Serve local models: consume inference.requests, batch, compute, answer on inference.results."""
    from streams.inference.service import run_inference_worker

    from connectors.kafka.connect import check_connection

    settings = load_settings(home=home) if home else _settings()
    check_connection(settings, timeout_s=settings.start_timeout_s)
    run_inference_worker(settings, instance=instance, loglevel=loglevel)


@cli.command()
@click.argument("text")
@click.option("-k", "k", type=int, default=5, show_default=True, help="How many items to return.")
@click.option("--tenant", help="Only items of this tenant.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def search(text: str, k: int, tenant: str | None, fmt: str) -> None:
    """Embed TEXT and list the K stored items nearest to it (cosine distance), from inference_vectors."""
    from connectors.clickhouse.query import format_result
    from streams.inference.search import search as nearest

    hits = nearest(_settings(), text, k, tenant_id=tenant)
    columns = ["correlation_id", "input_index", "agent_id", "tenant_id", "event_time", "distance"]
    click.echo(format_result(columns, [[getattr(h, c) for c in columns] for h in hits], fmt))


_FORMATS = click.Choice(["table", "csv", "json"])


@cli.command()
@click.argument("statement")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def sql(statement: str, fmt: str) -> None:
    """Run STATEMENT on ClickHouse (through the worker that owns the embedded engine, if one runs)."""
    from connectors.clickhouse.query import format_result
    from streams.query_server import query

    settings = _settings()
    columns, rows = query(settings, statement)
    click.echo(format_result(columns, rows, fmt))


@cli.command("lake-sql")
@click.argument("statement")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def lake_sql(statement: str, fmt: str) -> None:
    """Run STATEMENT with DuckDB over the lake; every Delta table is registered by name."""
    from connectors.clickhouse.query import format_result
    from connectors.lake.query import lake_query

    columns, rows = lake_query(_settings(), statement)
    click.echo(format_result(columns, rows, fmt))


@cli.command()
@click.option("--day", type=click.DateTime(formats=["%Y-%m-%d"]), help="UTC day (YYYY-MM-DD); default: yesterday.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def recommend(day, fmt: str) -> None:
    """Per tenant, agent type and queue, the cheapest model within EZ_RECOMMEND_QUALITY_TOLERANCE of
    the current one's quality, with the projected monthly saving; written to the lake and ClickHouse
    (the day replaced), as the model_recommendations DAG does."""
    from datetime import datetime, timedelta, timezone

    from connectors.batch.recommend import model_recommendations
    from connectors.clickhouse.query import format_result

    when = day.date() if day is not None else datetime.now(timezone.utc).date() - timedelta(days=1)
    done = model_recommendations(_settings(), when)
    columns = ["tenant_id", "agent_type", "queue", "current_provider", "current_model", "recommended_provider",
               "recommended_model", "current_quality", "recommended_quality", "current_cost_per_success_usd",
               "recommended_cost_per_success_usd", "successful_tasks", "monthly_saving_usd"]
    rows = [[r[c] for c in columns] for r in done.rows.to_pylist()]
    if fmt == "table":  # readable figures; csv and json keep them whole
        digits = {"current_quality": 3, "recommended_quality": 3, "current_cost_per_success_usd": 6,
                  "recommended_cost_per_success_usd": 6, "monthly_saving_usd": 2}
        rows = [[round(v, digits[c]) if c in digits else v for c, v in zip(columns, row)] for row in rows]
    click.echo(format_result(columns, rows, fmt))
    if fmt == "table":
        click.echo(f"{done.day}: {done.rows.num_rows} recommendation(s) over {done.groups} tenant/agent type/queue "
                   f"group(s); projected monthly saving ${done.monthly_saving_usd:,.2f}")


@cli.group()
def dlq() -> None:
    """Inspect and replay dead letters."""


@dlq.command("list")
def dlq_list() -> None:
    """Each DLQ topic with its dead letters, the distinct source messages among them (fewer: some
    source was dead-lettered twice) and their error classes."""
    from collections import Counter

    from connectors.kafka.dlq import ERROR_CLASS, dlq_topics, read_dead_letters

    settings = _settings()
    click.echo(f"{'DLQ TOPIC':<32} {'LETTERS':>7} {'SOURCES':>7}  ERRORS")
    for topic in dlq_topics(settings):
        letters = read_dead_letters(settings, topic)
        sources = len({letter.source_key for letter in letters})
        errors = Counter(letter.headers.get(ERROR_CLASS, "?") for letter in letters)
        click.echo(f"{topic:<32} {len(letters):>7} {sources:>7}  "
                   f"{', '.join(f'{k} {v}' for k, v in errors.most_common())}")


@dlq.command("show")
@click.argument("topic")
@click.option("--limit", default=20, show_default=True, help="Most dead letters to print.")
def dlq_show(topic: str, limit: int) -> None:
    """Print the dead letters of TOPIC (a .dlq topic) with their error and source; a repeat of an
    earlier letter's source is marked DUPLICATE (replay skips it)."""
    from connectors.kafka.dlq import ERROR_CLASS, ERROR_MESSAGE, PROCESSOR, read_dead_letters

    first: dict[object, str] = {}
    for letter in read_dead_letters(_settings(), topic, limit=limit):
        value = letter.value or b""
        where = f"{letter.dlq_topic}[{letter.dlq_partition}]@{letter.dlq_offset}"
        earlier = first.setdefault(letter.source_key, where)
        duplicate = f"  DUPLICATE of {earlier}" if earlier != where else ""
        click.echo(f"{where}  from {letter.source}  by {letter.headers.get(PROCESSOR, '?')}{duplicate}")
        click.echo(f"  {letter.headers.get(ERROR_CLASS, '?')}: {letter.headers.get(ERROR_MESSAGE, '')}")
        click.echo(f"  key={letter.key!r} value[{len(value)} bytes]={value[:48].hex()}{'…' if len(value) > 48 else ''}")


@dlq.command("replay")
@click.argument("topic")
@click.option("--chunk", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Dead letters per Kafka transaction.")
def dlq_replay(topic: str, chunk: int) -> None:
    """Send the dead letters of TOPIC back to their source topic, each source message once (after
    a fix). Safe to rerun, also after a replay stopped midway."""
    from connectors.kafka.dlq import replay

    done = replay(_settings(), topic, chunk=chunk)
    click.echo(f"{topic}: replayed {done.sent} dead letter(s), skipped {done.duplicates} duplicate(s)")


@cli.command("settings")
@click.option("--markdown", is_flag=True, help="Print the table in Markdown (for the README).")
def settings_cmd(markdown: bool) -> None:
    """List every setting: environment variable, default and meaning."""
    from connectors.settings import describe_settings

    if markdown:
        click.echo("| setting | default | meaning |\n| --- | --- | --- |")
        for name, default, doc in describe_settings():
            click.echo(f"| `{name}` | {f'`{default}`' if default else ''} | {doc} |")
        return
    for name, value, doc in describe_settings(_settings()):
        click.echo(f"{name:<34} {value}\n{'':<34} {doc}")


def main() -> None:
    """Entry point: runs the CLI and turns our errors into one clear line and exit code 2."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    except EzStreamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
