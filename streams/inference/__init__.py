"""Local model inference over Kafka: ``ezstream inference-worker``.

A consumer group on ``inference.requests`` batches requests dynamically, runs a local model (on
CUDA in fp16 when present, else on the CPU) and answers each request on ``inference.results``
with its correlation id. See docs/inference.md.
"""
