"""Corrupted adapters (bad checksum, NaN weights, wrong rank, wrong base, foreign
target modules, unreadable weights) are refused, counted in metrics, and the
user keeps the last good version, also across a server restart."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file

from personalize.v1 import assistant_pb2_grpc
from services.contract.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from tests.services.helpers import Collected, generate
from tests.support.adapters import announce, corrupt_manifest_sha, make_adapter, publish
from tests.support.topics import isolated_kafka


def edited(src: Path, dst: Path, weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
           config: Callable[[dict[str, object]], None] | None = None) -> Path:
    """A copy of the adapter at ``src`` with its tensors or config changed."""
    shutil.copytree(src, dst)
    if weights is not None:
        tensors = load_file(str(dst / WEIGHTS_FILE))
        weights(tensors)
        save_file(tensors, str(dst / WEIGHTS_FILE))
    if config is not None:
        body = json.loads((dst / CONFIG_FILE).read_text())
        config(body)
        (dst / CONFIG_FILE).write_text(json.dumps(body))
    return dst


def first_lora_a(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in sorted(tensors) if "lora_A" in k)


def nan_weights(tensors: dict[str, torch.Tensor]) -> None:
    tensors[first_lora_a(tensors)][0, 0] = float("nan")


def inf_weights(tensors: dict[str, torch.Tensor]) -> None:
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key][-1, -1] = float("inf")


def rank_4_config(body: dict[str, object]) -> None:
    body["r"] = 4  # the tensors stay rank 8


def foreign_targets(body: dict[str, object]) -> None:
    body["target_modules"] = ["q_proj", "v_proj", "lm_head"]


def renamed_module(tensors: dict[str, torch.Tensor]) -> None:
    key = first_lora_a(tensors)
    tensors[key.replace("q_proj", "embed_tokens").replace("v_proj", "embed_tokens")] = \
        tensors.pop(key)


def test_corrupted_adapters_refused_last_good_kept(servers, broker, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path, user_id: str) -> None:
    kafka = isolated_kafka(broker.bootstrap, "adapters")
    store_dir = tmp_path / "store"
    srv = servers.start(kafka, store=store_dir)
    store: AdapterStore = srv.store
    model_id = srv.engine.model_id
    topic = kafka.adapter_updates_topic
    good = make_adapter(tiny_model_dir, tmp_path / "good", seed=21)

    def served(stub) -> Collected:  # type: ignore[no-untyped-def]
        return generate(stub, user_id, "tell me about the sea", max_tokens=12, temperature=0.0)

    def refusals(server, reason: str) -> float:  # type: ignore[no-untyped-def]
        return server.metrics.adapter_refusals.labels(reason)._value.get()

    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = assistant_pb2_grpc.AssistantStub(ch)
        base_text = served(stub).texts[0]
        v1 = publish(store, broker.bootstrap, topic, user_id, good, model_id)
        deadline = time.monotonic() + 30
        while srv.adapters.version_of(user_id) != v1.version:
            assert time.monotonic() < deadline, "the good adapter was not installed"
            time.sleep(0.1)
        good_text = served(stub).texts[0]
        assert good_text != base_text

        bad: list[tuple[str, Callable[[], Path], str]] = [
            ("checksum", lambda: good, ""),
            ("non_finite", lambda: edited(good, tmp_path / "nan", weights=nan_weights), ""),
            ("non_finite", lambda: edited(good, tmp_path / "inf", weights=inf_weights), ""),
            ("rank", lambda: make_adapter(tiny_model_dir, tmp_path / "r16", seed=22, rank=16),
             ""),
            ("rank", lambda: edited(good, tmp_path / "r4", config=rank_4_config), ""),
            ("wrong_base", lambda: good, "some-other-model"),
            ("targets", lambda: edited(good, tmp_path / "lm", config=foreign_targets), ""),
            ("targets", lambda: edited(good, tmp_path / "emb", weights=renamed_module), ""),
            ("unreadable", lambda: edited(good, tmp_path / "junk", weights=None), ""),
        ]
        for reason, make, base in bad:
            before = refusals(srv, reason)
            adapter_dir = make()
            if reason == "unreadable":
                (adapter_dir / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
            manifest = store.publish(user_id, adapter_dir, base or model_id,
                                     store.latest(user_id) or "")
            if reason == "checksum":
                corrupt_manifest_sha(store.version_dir(user_id, manifest.version))
            announce(broker.bootstrap, topic, manifest)
            deadline = time.monotonic() + 30
            while refusals(srv, reason) == before:
                assert time.monotonic() < deadline, f"{manifest.version} ({reason}) not refused"
                time.sleep(0.05)
            out = served(stub)
            assert out.finished[0].adapter_version == v1.version, reason
            assert out.texts[0] == good_text, f"{reason}: not the last good weights"
        assert srv.metrics.adapter_loads.labels("refused")._value.get() == len(bad)

    # a restarted server scans the store: newest good version, the bad ones refused
    servers.stop(srv)
    again = servers.start(kafka, store=store_dir)
    try:
        assert again.adapters.version_of(user_id) == v1.version
        assert again.metrics.adapter_loads.labels("refused")._value.get() == len(bad)
        with grpc.insecure_channel(f"127.0.0.1:{again.port}") as ch:
            stub = assistant_pb2_grpc.AssistantStub(ch)
            assert served(stub).texts[0] == good_text
            # refusals do not block the next good version
            fixed = publish(store, broker.bootstrap, topic, user_id,
                            make_adapter(tiny_model_dir, tmp_path / "good2", seed=23), model_id)
            deadline = time.monotonic() + 30
            while again.adapters.version_of(user_id) != fixed.version:
                assert time.monotonic() < deadline, "the next good adapter was not installed"
                time.sleep(0.1)
            assert served(stub).texts[0] not in (good_text, base_text)
    finally:
        servers.stop(again)


@pytest.mark.parametrize("version", ["../v1", "v1/../../x", "v-1", "V1", "v1 ", ""])
def test_bad_versions_never_reach_the_file_system(tmp_path: Path, version: str) -> None:
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(Exception, match="version"):
        store.version_dir("alice", version)
