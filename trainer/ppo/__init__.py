"""PPO: per-user LoRA policies on one base model, rollouts, GAE and the clipped objective."""
