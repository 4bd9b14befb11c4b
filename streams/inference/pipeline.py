"""The compute path: tokenize on the CPU while the device runs the previous batch.

Two threads behind the :class:`~streams.inference.batcher.DynamicBatcher`: the tokenizer thread
takes a batch and tokenizes it (the fast tokenizer's batch API, parallel in Rust), up to
``depth`` batches ahead; the device thread runs the model on them and hands each finished batch
on. On a GPU the forward pass is far faster than tokenizing, so keeping them apart is what keeps
the device busy; torch and the tokenizer release the GIL, so both threads really run at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams import metrics
from streams.inference.batcher import DynamicBatcher, Work
from streams.inference.models import Model


@dataclass
class Prepared:
    """A tokenized batch: slices of at most ``max_batch`` texts, each with its texts' positions."""

    batch: list[Work]
    slices: list[tuple[list[int], Any]]
    texts: int
    started: float
    prepare_s: float


def prepare(model: Model, batch: list[Work], max_batch: int) -> Prepared:
    """Tokenize the texts of ``batch``, ``max_batch`` at a time, texts of similar length together."""
    started = time.monotonic()
    texts = [t for w in batch for t in w.texts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    slices = [(idx, model.prepare([texts[i] for i in idx]))
              for idx in (order[lo:lo + max_batch] for lo in range(0, len(order), max_batch))]
    return Prepared(batch, slices, len(texts), started, time.monotonic() - started)


def finish(model: Model, prepared: Prepared) -> None:
    """Run the model on a prepared batch and give each work its vectors and timings."""
    run_start = time.monotonic()
    vectors: list[Any] = [None] * prepared.texts
    for idx, inputs in prepared.slices:
        started = time.monotonic()
        out = model.run(inputs)
        metrics.INFERENCE_FORWARD_SECONDS.observe(time.monotonic() - started)
        metrics.INFERENCE_BATCH_TEXTS.observe(len(idx))
        for row, i in enumerate(idx):
            vectors[i] = out[row]
    compute_ms = (prepared.prepare_s + time.monotonic() - run_start) * 1000
    at = 0
    for w in prepared.batch:
        w.queue_ms = (prepared.started - w.received) * 1000
        w.compute_ms = compute_ms
        w.vectors = vectors[at:at + len(w.texts)]
        at += len(w.texts)


def compute(model: Model, batch: list[Work], max_batch: int) -> None:
    """Tokenize and run ``batch`` in the calling thread."""
    finish(model, prepare(model, batch, max_batch))


class ComputePipeline:
    """Batches from ``batcher`` -> tokenizer thread -> device thread -> ``on_done(batch)``.

    Runs until the batcher is closed and empty; :attr:`error` holds what stopped a thread.
    """

    def __init__(self, model: Model, batcher: DynamicBatcher, max_batch: int,
                 on_done: Callable[[list[Work]], None], depth: int = 2) -> None:
        self.model = model
        self.batcher = batcher
        self.max_batch = max_batch
        self.on_done = on_done
        self.error: BaseException | None = None
        self._prepared: queue.Queue[Prepared | None] = queue.Queue(depth)
        self._threads = [threading.Thread(target=self._tokenize, name="inference-tokenize", daemon=True),
                         threading.Thread(target=self._run, name="inference-device", daemon=True)]

    def start(self) -> ComputePipeline:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout_s: float = 30.0) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def _tokenize(self) -> None:
        try:
            while True:
                batch = self.batcher.take(0.1)
                if batch:
                    self._prepared.put(prepare(self.model, batch, self.max_batch))
                elif self.batcher.closed:
                    break
        except BaseException as exc:  # reported through .error; the worker stops on it
            self.error = exc
        finally:
            self._prepared.put(None)

    def _run(self) -> None:
        try:
            while (prepared := self._prepared.get()) is not None:
                if prepared.texts:
                    finish(self.model, prepared)
                self.on_done(prepared.batch)
        except BaseException as exc:
            self.error = exc
