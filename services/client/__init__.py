"""The client SDK and the ``personalize`` CLI: they need only gRPC and the generated
protobuf code (``pip install personalize``)."""

from services.client.sdk import AssistantClient, Candidate

__all__ = ["AssistantClient", "Candidate"]
