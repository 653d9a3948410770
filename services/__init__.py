"""The serving side of the loop: the shared contract, the inference server, the client
SDK and CLI, and the local development stack."""
