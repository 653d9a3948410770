"""Local development tooling: the embedded Kafka-protocol broker, the one-command stack and
preparation of the default model."""
