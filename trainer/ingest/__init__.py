"""Ingest: the consumer group over the feedback and generation topics, and the durable
journal that joins them exactly once."""
