"""Reward: the personal reward model (shared part + per-user part) trained on preference
pairs and thumbs; reward = the positive-class logit."""
