"""The inference server: serve (generation) -> feedback -> hot-swap of published adapters,
one core behind thin transports."""
