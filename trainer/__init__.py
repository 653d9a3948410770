"""The learning side of the loop, one subpackage per stage:
ingest (Kafka -> journal) -> data (preference pairs) -> reward (personal reward model)
-> ppo (per-user LoRA PPO) -> loop (schedule, gate, publish, the process)."""
