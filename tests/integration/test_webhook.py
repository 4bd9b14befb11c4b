"""The alert webhook against a real HTTP server on 127.0.0.1: retries 5xx, not 4xx."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.errors import TerminalError, TransientError
from connectors.kafka.events import Alert
from streams.intelligence._time import utc
from streams.intelligence.webhook import post_alert

T0 = 1_795_000_020_000


def _alert() -> Alert:
    return Alert(
        event_time=utc(T0), agent_id="ezstream-intelligence", agent_type="stream-processor",
        tenant_id="platform", trace_id="tr-1", alert_id="5b0c3c43-0000-5000-8000-000000000001",
        kind="error_rate", severity="critical", state="firing", subject="openai/gpt-4",
        message="openai/gpt-4: 3 of 10 calls failed (30.0%)", value=0.3, threshold=0.2,
        first_seen=utc(T0), last_seen=utc(T0), details={"provider": "openai"},
    )


def test_retries_5xx_with_backoff_and_delivers_once(hook):
    state, url = hook
    state.statuses[:] = [503, 503]

    assert post_alert(url, _alert(), timeout=5, retries=3, backoff=0.01) == 200

    assert len(state.requests) == 3  # two refused, the third delivered, nothing after
    path, content_type, body = state.requests[-1]
    assert path == "/services/T000/B000/secret-token" and content_type == "application/json"
    payload = json.loads(body)
    assert payload["text"] == "[CRITICAL] error_rate openai/gpt-4: openai/gpt-4: 3 of 10 calls failed (30.0%)"
    (attachment,) = payload["attachments"]
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["value"] == "0.3" and fields["threshold"] == "0.2"
    assert fields["alert id"] == "5b0c3c43-0000-5000-8000-000000000001"
    assert attachment["color"] == "#D00000" and attachment["ts"] == T0 // 1000
    assert {body for _, _, body in state.requests} == {body}  # every try sent the same message


def test_a_4xx_is_not_retried(hook):
    state, url = hook
    state.statuses[:] = [400]

    with pytest.raises(TerminalError, match="HTTP 400") as raised:
        post_alert(url, _alert(), retries=3, backoff=0.01)

    assert len(state.requests) == 1
    assert "secret-token" not in str(raised.value)  # the URL path is the webhook's secret


def test_gives_up_after_the_retries(hook):
    state, url = hook
    state.statuses[:] = [500, 429, 503]  # Slack throttling (429) is waited out too

    with pytest.raises(TransientError, match="failed 3 times.*HTTP 503"):
        post_alert(url, _alert(), retries=2, backoff=0.01)
    assert len(state.requests) == 3


def test_connection_refused_is_retried_then_transient():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()  # nothing listens on that port any more

    with pytest.raises(TransientError, match="failed 2 times.*ConnectionRefusedError"):
        post_alert(f"http://127.0.0.1:{port}/hook", _alert(), retries=1, backoff=0.01)
