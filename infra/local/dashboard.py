"""The dashboard's Streamlit server on 127.0.0.1, started, checked and stopped like the other
local services (``ezstream dashboard``, ``make demo``; ``ezstream down`` stops it by its pid).

The page (``streams/dashboard/app.py``) reads the settings from its environment, which holds every
setting of the process that starts it: no secret is ever in its command line. Streamlit's usage
statistics are off, and it listens on the loopback address only.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connectors.errors import ServiceError
from connectors.settings import Settings, env_name
from infra.local.net import port_in_use
from infra.local.process import ManagedProcess

HOST = "127.0.0.1"
#: The Streamlit script of the page.
APP = Path(__file__).resolve().parents[2] / "streams" / "dashboard" / "app.py"


class Dashboard:
    """``streamlit run streams/dashboard/app.py`` on ``127.0.0.1:EZ_DASHBOARD_PORT`` for one ``EZ_HOME``."""

    name = "dashboard"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.dashboard_port
        self.proc = ManagedProcess(self.name, settings.run_dir, settings.logs_dir)

    @property
    def url(self) -> str:
        """Where the running dashboard serves (the port it was started with), else where it would."""
        return self.proc.state().get("url") or f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        """Its URL, as the other services' addresses are shown by ``ezstream status``."""
        return self.url

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        """Start the dashboard unless ours already runs; wait until it answers."""
        what = "the dashboard (Streamlit)"
        if self.proc.pid() is not None:
            self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, what)
            return "already running"
        if port_in_use(HOST, self.port):
            raise ServiceError(f"dashboard: port {self.port} on {HOST} is taken by another process; stop it or "
                               "set EZ_DASHBOARD_PORT to a free port")
        argv = [
            sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", HOST, "--server.port", str(self.port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer",
        ]
        url = f"http://{HOST}:{self.port}"
        self.proc.start(argv, env=settings_environment(self.settings), state={"url": url},
                        marker=f"{APP} --server.address {HOST} --server.port {self.port}")
        self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, what)
        return "started"

    def down(self) -> bool:
        return self.proc.stop(timeout_s=30)


def settings_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting of ``settings`` as its ``EZ_…`` variable, so
    a child's ``load_settings()`` gives the same settings (secrets included: the environment, not
    the command line, is where they may go)."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env.pop(env_name(name), None)
        if value is not None:
            env[env_name(name)] = _text(value)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    return env


def _text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
