"""A base-model request batched with adapter requests gets no adapter.

vLLM's CPU LoRA ops used to apply the adapter in the last slot to tokens without one
(index -1); ``services.server.vllm_fixes`` fixes them in every vLLM process. The op tests
pin the fix down on tensors; the engine test shows it is live in the model worker.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops

from services.server import vllm_fixes
from tests.services.helpers import greedy, wait_for_version
from tests.support.adapters import make_adapter, publish


def _raw(name: str):  # type: ignore[no-untyped-def]
    op = getattr(lora_ops, name)
    return getattr(op, "__wrapped__", op)


def test_shrink_gives_no_delta_to_tokens_without_adapter() -> None:
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 1, 4, 8, generator=g)  # (slots, 1, rank, in)
    x, idx = torch.randn(3, 8, generator=g), torch.tensor([0, -1, 1])
    raw, fixed = torch.zeros(3, 4), torch.zeros(3, 4)
    _raw("bgmv_shrink")(x, weights, raw, idx, 0.5)
    vllm_fixes.skip_no_lora(_raw("bgmv_shrink"))(x, weights, fixed, idx, 0.5)
    assert raw[1].abs().sum() > 0, "unfixed, token 1 gets the last slot's adapter"
    assert torch.equal(fixed[1], torch.zeros(4))
    assert torch.equal(fixed[[0, 2]], raw[[0, 2]])


def test_expand_ops_leave_tokens_without_adapter_untouched() -> None:
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(2, 1, 6, 4, generator=g)  # (slots, 1, out, rank)
    x, idx = torch.randn(3, 4, generator=g), torch.tensor([-1, 1, 0])
    for name, extra in (("bgmv_expand", ()), ("bgmv_expand_slice", (2, 6))):
        width = 6 + sum(extra[:1])
        raw, fixed = torch.ones(3, width), torch.ones(3, width)
        _raw(name)(x, weights, raw, idx, *extra, add_inputs=True)
        vllm_fixes.skip_no_lora(_raw(name))(x, weights, fixed, idx, *extra, add_inputs=True)
        assert not torch.equal(raw[0], torch.ones(width)), name
        assert torch.equal(fixed[0], torch.ones(width)), name
        assert torch.equal(fixed[1:], raw[1:]), name


def test_the_fix_is_installed_once() -> None:
    vllm_fixes.register()
    vllm_fixes.register()
    assert vllm_fixes.installed()
    assert not hasattr(lora_ops.bgmv_shrink.__wrapped__, "__wrapped__")


def test_base_requests_batched_with_adapter_requests_get_no_adapter(  # type: ignore[no-untyped-def]
        stub, server, broker, tiny_model_dir: Path, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    bystander, users = f"iso-base-{tag}", [f"iso{i}-{tag}" for i in range(2)]
    expected = {bystander: greedy(stub, bystander).texts[0]}
    for i, user in enumerate(users):  # two adapters: both LoRA slots of the test engine
        adapter = make_adapter(tiny_model_dir, tmp_path / user, seed=300 + i)
        publish(server.store, broker.bootstrap, "adapter-updates", user, adapter,
                server.engine.model_id)
        expected[user] = wait_for_version(stub, user, "v1").texts[0]
    assert len(set(expected.values())) == 3
    order = [bystander, *users] * 5
    with ThreadPoolExecutor(len(order)) as pool:  # all at once: shared decode batches
        answers = list(pool.map(lambda u: greedy(stub, u), order))
    for user, out in zip(order, answers, strict=True):
        assert out.finished[0].adapter_version == ("" if user == bystander else "v1")
        assert out.texts[0] == expected[user], f"{user} got another adapter's answer"


def test_server_refuses_to_run_without_the_fix_in_vllm_processes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    vllm_fixes.check_plugin_enabled()  # installed with the package
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    with pytest.raises(RuntimeError, match="leaves out 'personalize_fixes'"):
        vllm_fixes.check_plugin_enabled()
