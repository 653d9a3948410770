"""Fixtures shared by the trainer's tests."""

from __future__ import annotations

import pytest

from trainer.reward.config import RewardModelConfig
from trainer.reward.encoder import TextEncoder
from trainer.reward.model import PersonalRewardModel


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    """The reward model's default frozen encoder (MiniLM, every depth pooled), loaded once;
    models built on it share its embedding cache."""
    return PersonalRewardModel(RewardModelConfig()).encoder
