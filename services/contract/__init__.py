"""The contract between the server and the trainer: Kafka record types, the adapter store
and its manifest, the typed user status, id validation, tokens, domain errors and the
config loader. It imports neither side."""
