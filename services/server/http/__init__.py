"""The OpenAI-compatible HTTP transport: JSON in -> the same AssistantCore -> JSON / SSE out."""
