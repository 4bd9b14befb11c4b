"""Free-text policy: snippets dropped unless capture is on, then cut on a character boundary."""

from __future__ import annotations

import pyarrow as pa
import pytest
from confluent_kafka import Message

from connectors.kafka.codec import decode, default_codec, encode
from connectors.kafka.freetext import FreeTextPolicy
from connectors.kafka.producer import EventProducer
from connectors.settings import load_settings
from connectors.sink import OFFSET_COLUMN, PARTITION_COLUMN, Sink
from streams.sinks.runner import SinkRunner
from tests.unit.test_events import llm_call

OFF = FreeTextPolicy(capture=False, max_chars=5)
ON = FreeTextPolicy(capture=True, max_chars=5)
#: Two, three and four UTF-8 bytes per character, and a combining accent (a code point of its own).
WIDE = "éß€😀🎉e\u0301x"


def test_policy_follows_the_settings(tmp_path):
    assert FreeTextPolicy.from_settings(load_settings(home=tmp_path, capture_snippets=False)) == \
        FreeTextPolicy(False, 256)
    assert FreeTextPolicy.from_settings(load_settings(home=tmp_path, capture_snippets=True,
                                                      snippet_max_chars=7)) == FreeTextPolicy(True, 7)


@pytest.mark.parametrize(("policy", "value", "kept"), [
    (OFF, "a prompt", None),
    (OFF, "", None),
    (OFF, None, None),
    (ON, None, None),
    (ON, "abc", "abc"),
    (ON, "abcde", "abcde"),
    (ON, "abcdefgh", "abcde"),
    (ON, WIDE, "éß€😀🎉"),
])
def test_text(policy, value, kept):
    assert policy.text(value) == kept


def test_a_cut_counts_characters_and_leaves_valid_utf8():
    policy = FreeTextPolicy(capture=True, max_chars=4)
    cut = policy.text(WIDE)
    assert cut == "éß€😀" and len(cut.encode()) == 2 + 2 + 3 + 4
    assert cut.encode().decode("utf-8") == cut


def test_record_without_free_text_or_of_another_event_is_the_same_object():
    record = llm_call().to_record()
    assert OFF.record("llm_call", record) is record  # both snippets None already
    task = {"prompt_snippet": "not a field of this event"}
    assert OFF.record("task_event", task) is task


def test_record_is_copied_not_changed_in_place():
    record = llm_call(prompt_snippet="p" * 10, output_snippet="o" * 3).to_record()
    off, on = OFF.record("llm_call", record), ON.record("llm_call", record)
    assert (off["prompt_snippet"], off["output_snippet"]) == (None, None)
    assert (on["prompt_snippet"], on["output_snippet"]) == ("ppppp", "ooo")
    assert record["prompt_snippet"] == "p" * 10
    assert {k: v for k, v in on.items() if not k.endswith("_snippet")} == \
        {k: v for k, v in record.items() if not k.endswith("_snippet")}


def arrow_rows(*snippets: tuple[str | None, str | None]) -> pa.Table:
    records = [llm_call(call_id=f"c-{i}", prompt_snippet=p, output_snippet=o).to_record()
               for i, (p, o) in enumerate(snippets)]
    return default_codec().decode_batch_arrow([encode("llm_call", r) for r in records], "llm_call").table


def test_table_off_nulls_the_columns_and_keeps_their_type():
    rows = arrow_rows(("a long prompt", None), (None, "an output"), (None, None))
    out = OFF.table("llm_call", rows)
    assert out.column("prompt_snippet").to_pylist() == [None, None, None]
    assert out.column("output_snippet").to_pylist() == [None, None, None]
    assert out.schema == rows.schema
    assert out.drop_columns(["prompt_snippet", "output_snippet"]).equals(
        rows.drop_columns(["prompt_snippet", "output_snippet"]))


def test_table_on_cuts_by_characters_like_the_producer():
    values = [WIDE, "abc", None, "abcdefgh", "", "😀" * 9]
    rows = arrow_rows(*[(v, v) for v in values])
    out = ON.table("llm_call", rows)
    assert out.column("prompt_snippet").to_pylist() == [ON.text(v) for v in values]
    assert out.column("output_snippet").to_pylist() == ["éß€😀🎉", "abc", None, "abcde", "", "😀" * 5]
    assert out.schema == rows.schema
    out.validate(full=True)  # full validation checks the strings are valid UTF-8


def test_table_that_needs_nothing_is_the_same_object():
    short = arrow_rows(("abc", "de"))
    assert ON.table("llm_call", short) is short
    empty = arrow_rows((None, None))
    assert OFF.table("llm_call", empty) is empty
    other = pa.table({"prompt_snippet": ["a long text of another event"]})
    assert OFF.table("task_event", other) is other


def test_producer_drops_or_cuts_before_encoding(tmp_path, monkeypatch):
    event = llm_call(prompt_snippet="x" * 300 + "😀", output_snippet=WIDE)
    for capture, want in ((False, (None, None)), (True, ("x" * 6, "éß€😀🎉e"))):
        settings = load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", capture_snippets=capture,
                                 snippet_max_chars=6)
        producer = EventProducer(settings)
        sent: list[bytes] = []
        monkeypatch.setattr(producer, "send_encoded", lambda topic, key, value: sent.append(value))
        producer.send(event)
        _, record = decode(sent[0], "llm_call")
        assert (record["prompt_snippet"], record["output_snippet"]) == want
        assert {k: v for k, v in record.items() if not k.endswith("_snippet")} == \
            {k: v for k, v in decode(encode("llm_call", event.to_record()))[1].items() if not k.endswith("_snippet")}
    assert event.prompt_snippet == "x" * 300 + "😀"  # the caller's event is left as it was


def _message(value: bytes, offset: int) -> Message:
    # No Kafka timestamp: the value rules' absolute bounds only.
    return Message(topic="agent.llm_calls", partition=0, offset=offset, value=value, timestamp=(0, -1))


class _NoSink(Sink):
    name = "lake"

    def setup(self) -> None: ...

    def resume_points(self, topic, partitions):
        return {}

    def write(self, batch) -> None: ...


@pytest.mark.parametrize(("capture", "want"), [(False, [None, None]), (True, ["pp", None])])
def test_sink_loop_applies_the_policy_to_what_other_producers_sent(tmp_path, capture, want):
    settings = load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1", capture_snippets=capture,
                             snippet_max_chars=2)
    runner = SinkRunner(settings, _NoSink())
    raw = [encode("llm_call", llm_call(call_id=f"c-{i}", prompt_snippet=p).to_record())
           for i, p in enumerate(["p" * 1000, None])]
    table = runner._decode("llm_call", [[_message(v, i) for i, v in enumerate(raw)]])
    assert table.column("prompt_snippet").to_pylist() == want
    assert table.column(OFFSET_COLUMN).to_pylist() == [0, 1] and table.column(PARTITION_COLUMN).to_pylist() == [0, 0]
