"""Simulated users with hidden preferences driving the public gRPC API (``make demo``)."""
