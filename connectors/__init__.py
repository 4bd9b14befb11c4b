"""Connectors to the external systems of EzAigent Streams: one package per system.

``connectors`` holds everything the Airflow DAG tasks may import: settings, the error tree and
the Kafka, lake and ClickHouse clients. Nothing here imports the stream-processing stack.
"""
