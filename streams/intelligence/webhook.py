"""Alerts to a Slack-compatible incoming webhook (a JSON POST), with retries and backoff."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from connectors.errors import TerminalError, TransientError
from connectors.kafka.events import Alert

#: Attachment colour by state and severity: green once resolved, else by urgency.
_COLOURS = {"info": "#439FE0", "warning": "#DAA038", "critical": "#D00000"}
_RESOLVED_COLOUR = "#2EB886"


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The Slack message of an alert: a one-line ``text`` and an attachment with the numbers."""
    resolved = alert.state == "resolved"
    icon = "RESOLVED" if resolved else alert.severity.upper()
    colour = _RESOLVED_COLOUR if resolved else _COLOURS.get(alert.severity, _COLOURS["warning"])
    fields = {
        "kind": alert.kind,
        "subject": alert.subject,
        "value": f"{alert.value:g}",
        "threshold": f"{alert.threshold:g}",
        "first seen": alert.first_seen.isoformat(),
        "last seen": alert.last_seen.isoformat(),
        "alert id": alert.alert_id,
    }
    return {
        "text": f"[{icon}] {alert.kind} {alert.subject}: {alert.message}",
        "attachments": [
            {
                "color": colour,
                "fallback": alert.message,
                "fields": [{"title": k, "value": v, "short": True} for k, v in fields.items()],
                "ts": int(alert.event_time.timestamp()),
            }
        ],
    }


def post_alert(
    url: str,
    alert: Alert,
    *,
    timeout: float = 5.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> int:
    """POST ``alert`` as Slack-compatible JSON to ``url``; the HTTP status of the delivery.

    A 5xx answer, a 429 or a connection error is retried ``retries`` times, waiting ``backoff``
    seconds and twice as long before each further try; then :class:`TransientError`. Another
    4xx answer means the request itself is wrong and raises :class:`TerminalError` at once.
    Error messages name the host only: a webhook URL's path is its secret.
    """
    body = json.dumps(slack_payload(alert)).encode("utf-8")
    host = urlsplit(url).netloc
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            # Slack answers 429 when sending too fast: waiting is the cure, as for a 5xx.
            if exc.code < 500 and exc.code != 429:
                raise TerminalError(
                    f"alert webhook at {host} refused alert {alert.alert_id}: HTTP {exc.code}"
                ) from None
            failure = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            failure = f"{type(reason).__name__}: {reason}"
    raise TransientError(
        f"alert webhook at {host} failed {retries + 1} times for alert {alert.alert_id}, "
        f"last: {failure}"
    )
