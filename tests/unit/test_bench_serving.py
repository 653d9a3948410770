"""bench.serving's bookkeeping: one group of distinct users per LoRA shape and adapter count,
rows relative to the base model's pass, and synthetic adapters of the named shape."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import LoraShape, make_adapters
from bench.serving import BASE, summarise, user_groups
from services.contract.ids import validate_user_id


def test_each_shape_and_count_gets_its_own_valid_users() -> None:
    groups = user_groups("serve1", [LoraShape(8, "qv"), LoraShape(2, "mlp")], [1, 8])
    assert list(groups) == [BASE, ("8xqv", 1), ("8xqv", 8), ("2xmlp", 1), ("2xmlp", 8)]
    assert [len(users) for users in groups.values()] == [1, 1, 8, 1, 8]
    everyone = [u for users in groups.values() for u in users]
    assert len(set(everyone)) == len(everyone)
    for user in everyone:
        validate_user_id(user)


def test_rows_are_medians_relative_to_the_base_pass() -> None:
    def passes(*tps: float) -> list[dict[str, float]]:
        return [{"tokens_per_s": t, "latency_p50_s": 1.0, "latency_p99_s": 2.0} for t in tps]

    rows = summarise({BASE: passes(100, 90, 110), ("2xmlp", 8): passes(80, 50, 85)})
    assert [(r["lora"], r["adapters"], r["tokens_per_s"]) for r in rows] == [
        ("", 0, 100), ("2xmlp", 8, 80)]
    assert rows[1]["ratio_vs_base"] == 0.8


def test_synthetic_adapters_adapt_the_named_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    [mlp] = make_adapters(tiny_model_dir, tmp_path, ["u"], LoraShape(2, "mlp"))
    config = json.loads((mlp / "adapter_config.json").read_text())
    assert config["r"] == 2
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "up_proj"]
