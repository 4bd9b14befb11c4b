"""Real-time agent intelligence: windowed LLM-call aggregates, alert rules, alert webhook.

Pure logic only (no Kafka, no Faust): the stream agents decode events, call these state
machines and produce what they return, and keep their state in changelog-backed tables through
each class's ``to_dict``/``from_dict``.
"""
