"""Real PEFT LoRA adapters for the tiny model, written the way the trainer does."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kafka import KafkaProducer

from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterManifest, AdapterStore


def make_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8) -> Path:
    """A rank-``rank`` adapter on q_proj/v_proj with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                        lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir)
    return out_dir


def publish(store: AdapterStore, bootstrap: str, topic: str, user_id: str, adapter_dir: Path,
            base_model: str) -> AdapterManifest:
    """Store the adapter as the successor of the user's latest version and announce it."""
    manifest = store.publish(user_id, adapter_dir, base_model, store.latest(user_id) or "")
    announce(bootstrap, topic, manifest)
    return manifest


def announce(bootstrap: str, topic: str, manifest: AdapterManifest) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    record = AdapterUpdateRecord(user_id=manifest.user_id, version=manifest.version,
                                 sha256=manifest.sha256, base_model=manifest.base_model,
                                 created_at=time.time())
    producer.send(topic, key=manifest.user_id.encode(), value=record.to_json()).get(timeout=10)
    producer.close()


def corrupt_manifest_sha(version_dir: Path) -> None:
    path = version_dir / "manifest.json"
    body = json.loads(path.read_text())
    body["sha256"] = "0" * 64
    path.write_text(json.dumps(body))
