"""Airflow on this machine: its own cached virtualenv, ``airflow standalone`` on a loopback port.

Airflow 3 and faust-streaming cannot share a virtualenv (their croniter pins clash), so Airflow
gets its own, in the download cache, keyed on the Airflow version and the hash of
:data:`REQUIREMENTS`, the complete pinned package set (Airflow's published constraints files are
not reachable from where this runs, only the package index is). It is installed with
``--no-deps``, exactly as pinned, once; a second install is a no-op. The project itself is not
installed into it: every Airflow command gets this checkout on ``PYTHONPATH``, so DAG tasks
import ``connectors/`` from the checkout that started them, and several checkouts share one
virtualenv. Nothing of the ``stream`` extra is in it.

``start`` runs ``airflow standalone`` (SQLite metadata, local executor) with ``airflow_dags/``
as the DAG folder, ``$EZ_HOME/airflow`` as ``AIRFLOW_HOME`` and the project's settings passed as
``EZ_*`` variables, so DAG tasks see the same lake and ClickHouse as the CLI. The UI's one user,
``admin``, gets a random password kept in ``$AIRFLOW_HOME`` (mode 600), never printed.

Run as ``python -m infra.local.airflow install|start|stop|status`` (the Makefile's ``airflow*``
targets).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from connectors.errors import ServiceError
from connectors.settings import Settings, load_settings
from infra.local.net import port_in_use
from infra.local.process import ManagedProcess

#: The pinned Airflow release.
AIRFLOW_VERSION = "3.3.2"
#: Every package of Airflow's virtualenv, pinned.
REQUIREMENTS = Path(__file__).resolve().with_name("airflow-requirements.txt")
#: The checkout whose ``connectors/`` and ``airflow_dags/`` Airflow uses.
REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "airflow_dags"
#: The UI's user (simple auth manager, admin role).
USER = "admin"

Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


def venv_dir(settings: Settings) -> Path:
    """Airflow's virtualenv in the download cache, one per pinned set of packages."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return settings.cache_dir / "airflow" / f"{AIRFLOW_VERSION}-{python}-{digest}"


def airflow_bin(settings: Settings) -> Path:
    return venv_dir(settings) / "bin" / "airflow"


def python_bin(settings: Settings) -> Path:
    return venv_dir(settings) / "bin" / "python"


def install(settings: Settings, echo: Echo = _echo) -> Path:
    """Create (once) Airflow's virtualenv with every pinned package; returns the venv.

    :raises ServiceError: pip failed (the message holds the tail of its log).
    """
    venv = venv_dir(settings)
    done = venv / ".installed"
    if done.exists():
        return venv
    log = settings.logs_dir / "airflow-install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"installing Airflow {AIRFLOW_VERSION} into {venv} (first time only, a few minutes)…")
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], log)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run([*pip, "install", "--no-deps", "-r", str(REQUIREMENTS)], log)
    _run([*pip, "check"], log)
    done.write_text(AIRFLOW_VERSION)
    return venv


def _run(argv: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ServiceError(f"Airflow install: `{' '.join(argv[:4])} …` failed (log: {log}):\n{tail}")


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def password_file(home: Path) -> Path:
    """Where the simple auth manager reads the UI user's password."""
    return home / "simple_auth_manager_passwords.json.generated"


def password(home: Path) -> str:
    """The UI user's password, made on first use."""
    path = password_file(home)
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({USER: secrets.token_urlsafe(18)}) + "\n")
    return json.loads(path.read_text())[USER]


def settings_env(settings: Settings) -> dict[str, str]:
    """``EZ_*`` variables that give a DAG task the same lake and ClickHouse as ``settings``."""
    env = {
        "EZ_HOME": str(settings.home),
        "EZ_CACHE_DIR": str(settings.cache_dir),
        "EZ_LAKE_URI": settings.lake_uri,
        "EZ_CLICKHOUSE_DSN": settings.clickhouse_dsn.get_secret_value(),
        "EZ_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "EZ_CLICKHOUSE_TTL_DAYS": str(settings.clickhouse_ttl_days),
        "EZ_LAKE_RETENTION_DAYS": str(settings.lake_retention_days),
        "EZ_RECOMMEND_QUALITY_TOLERANCE": str(settings.recommend_quality_tolerance),
        "EZ_RECOMMEND_MIN_SUCCESSFUL_TASKS": str(settings.recommend_min_successful_tasks),
        "EZ_S3_REGION": settings.s3_region,
        "EZ_TOPIC_PREFIX": settings.topic_prefix,
    }
    if settings.budgets_file is not None:
        env["EZ_BUDGETS_FILE"] = str(settings.budgets_file)
    if settings.s3_endpoint:
        env["EZ_S3_ENDPOINT"] = settings.s3_endpoint
    if settings.s3_access_key_id:
        env["EZ_S3_ACCESS_KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        env["EZ_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env


def airflow_env(settings: Settings, home: Path, port: int) -> dict[str, str]:
    """The whole environment of an Airflow command for this project."""
    password(home)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EZ_", "AIRFLOW", "AWS_"))}
    return {
        **base,
        **settings_env(settings),
        "PATH": f"{venv_dir(settings) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file(home)),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }


class AirflowServer:
    """``airflow standalone`` for this project, on ``127.0.0.1:port``."""

    name = "airflow"

    def __init__(self, settings: Settings, port: int = 8080, home: Path | None = None) -> None:
        self.settings = settings
        self.port = port
        self.home = home or airflow_home(settings)
        self.proc = ManagedProcess(self.name, settings.run_dir, settings.logs_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """The API server answers and the scheduler reports healthy."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=timeout_s) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return body.get("scheduler", {}).get("status") == "healthy"

    def up(self, echo: Echo = _echo) -> str:
        """Install if needed, start ``airflow standalone`` unless ours runs, wait until healthy."""
        running = self.proc.state()
        if running:
            self.port = int(running["port"])
            self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "Airflow")
            return "already running"
        if port_in_use("127.0.0.1", self.port):
            raise ServiceError(f"Airflow: port {self.port} on 127.0.0.1 is taken by another process; "
                               "stop it or choose another port with AIRFLOW_PORT")
        install(self.settings, echo)
        env = airflow_env(self.settings, self.home, self.port)
        argv = [str(airflow_bin(self.settings)), "standalone"]
        state = {"port": self.port, "home": str(self.home)}
        self.proc.start(argv, env=env, marker=str(airflow_bin(self.settings)), state=state)
        # First start migrates the metadata database: slower than the other services.
        self.proc.wait_ready(self.healthy, max(self.settings.start_timeout_s, 300.0), "Airflow")
        return "started"

    def down(self) -> bool:
        """Stop every Airflow process we started; True if something was running."""
        pid = self.proc.child.pid if self.proc.child is not None else self.proc.pid()
        stopped = self.proc.stop(timeout_s=30)
        if pid is not None:
            # The standalone's components (API server, scheduler…) outlive it by a few seconds.
            deadline = time.monotonic() + 30
            while _group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        return stopped

    def login_help(self) -> str:
        return (f"Airflow UI: {self.url}  user: {USER}  password: in {password_file(self.home)}\n"
                f"DAG folder: {DAGS_FOLDER}; logs: {self.proc.log_file}; stop with `make airflow-stop`")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    settings = load_settings()
    port = int(os.environ.get("AIRFLOW_PORT", "8080"))
    server = AirflowServer(settings, port=port)
    try:
        if command == "install":
            _echo(f"Airflow {AIRFLOW_VERSION}: {install(settings)}")
        elif command == "start":
            _echo(f"Airflow: {server.up()}")
            _echo(server.login_help())
        elif command == "stop":
            _echo("Airflow: stopped" if server.down() else "Airflow: not running")
        elif command == "status":
            state = server.proc.state()
            _echo(f"Airflow: running on port {state['port']}" if state else "Airflow: not running")
        else:
            _echo("usage: python -m infra.local.airflow install|start|stop|status")
            return 2
    except ServiceError as exc:
        _echo(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
