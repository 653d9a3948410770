"""A prompt as the trainer sees it: the chat that led to a completion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ChatMessages = Sequence[Mapping[str, str]]
"""One prompt: a chat as a list of {"role": ..., "content": ...} messages."""


def prompt_text(messages: ChatMessages) -> str:
    """The text the reward model reads as the prompt: the conversation so far."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
