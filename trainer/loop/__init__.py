"""The loop: which user trains next, one user's turn (reward model -> PPO -> gate),
publishing, and the trainer process."""
