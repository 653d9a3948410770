"""The CPU multi-LoRA ops (services/server/lora_cpu_ops.py) against vLLM's own torch ops:
op by op on random tensors (the C++ kernel bit for bit in bf16 and fp32; the grouped
PyTorch fallback bit for bit in bf16, to the last bits of its fp32 sums in fp32), and on
a real engine, where greedy answers of several adapters and of the base model in one
batch are the same with either."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops

from services.server import lora_cpu_ops, vllm_fixes
from tests.support.adapters import make_adapter

SLOTS, RANK = 6, 8
LAYERS = {"qkv": (48, (48, 16, 16)), "o": (48, (48,)), "down": (96, (48,))}  # in, out slices
PATTERNS = {
    "distinct": lambda t: torch.arange(t) % SLOTS,
    "one": lambda t: torch.full((t,), 2),
    "with_base": lambda t: torch.tensor([-1, 0, 3, -1, 5, 0, -1, 1, 4, 2, 2, -1][:t]),
    "all_base": lambda t: torch.full((t,), -1),
}


@pytest.fixture(scope="module", autouse=True)
def fixed_ops() -> None:
    vllm_fixes.register()  # vLLM's ops as the CPU wrapper calls them (-1 gets no delta)


@pytest.fixture(params=["kernel", "grouped"])
def impl(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "kernel" and not lora_cpu_ops.load_kernel():
        pytest.skip("the C++ kernel did not build here")
    saved = lora_cpu_ops._state["kernel"]
    lora_cpu_ops._state["kernel"] = request.param == "kernel"
    yield request.param
    lora_cpu_ops._state["kernel"] = saved


def stack(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * 0.1).to(dtype)


def vllm_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                b: tuple[torch.Tensor, ...], idx: torch.Tensor, slices: tuple[int, ...],
                scale: float) -> None:
    """What vLLM's PunicaWrapperCPU.add_lora_linear runs: an fp32 buffer per slice,
    shrink into it, expand from it."""
    offset = 0
    for a_i, b_i, size in zip(a, b, slices, strict=True):
        buf = torch.zeros(x.shape[0], RANK, dtype=torch.float32)
        lora_ops.bgmv_shrink(x, a_i, buf, idx, scale)
        lora_ops.bgmv_expand_slice(buf, b_i, y, idx, offset, size, True)
        offset += size


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    if ours.dtype == torch.float32:  # the fp32 sums run in another order
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(ours, theirs), (ours.float() - theirs.float()).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("tokens", [1, 7, 12])
def test_lora_linear_matches_vllms_ops(impl: str, dtype: torch.dtype, pattern: str,
                                       tokens: int) -> None:
    gen = torch.Generator().manual_seed(tokens)
    idx = PATTERNS[pattern](tokens)
    for d_in, slices in LAYERS.values():
        a = tuple(stack(gen, dtype, SLOTS, 1, RANK, d_in) for _ in slices)
        b = tuple(stack(gen, dtype, SLOTS, 1, n, RANK) for n in slices)
        x = stack(gen, dtype, tokens, d_in) * 10
        y = stack(gen, dtype, tokens, sum(slices)) * 10
        theirs, ours = y.clone(), y.clone()
        vllm_linear(theirs, x, a, b, idx, slices, 2.0)
        lora_cpu_ops.lora_linear(ours, x, a, b, idx, 2.0, slices)
        assert_same(ours, theirs)
        assert torch.equal(ours[idx < 0], y[idx < 0]), "no adapter, no delta"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pattern", ["distinct", "with_base"])
def test_single_ops_match_vllms_ops(impl: str, dtype: torch.dtype, pattern: str) -> None:
    gen = torch.Generator().manual_seed(3)
    idx = PATTERNS[pattern](9)
    x = stack(gen, dtype, 9, 40)
    a, b = stack(gen, dtype, SLOTS, 1, RANK, 40), stack(gen, dtype, SLOTS, 1, 24, RANK)
    theirs, ours = torch.zeros(9, RANK), torch.zeros(9, RANK)
    lora_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    lora_cpu_ops.bgmv_shrink(x, a, ours, idx, 0.5)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    for add in (True, False):
        y = stack(gen, dtype, 9, 30)
        y_theirs, y_ours = y.clone(), y.clone()
        lora_ops.bgmv_expand_slice(theirs, b, y_theirs, idx, 3, 24, add)
        lora_cpu_ops.bgmv_expand_slice(theirs, b, y_ours, idx, 3, 24, add)
        assert_same(y_ours, y_theirs)
    rows = stack(gen, dtype, 9, RANK)  # the embedding's form: x already in y's dtype
    y = stack(gen, dtype, 9, 24)
    y_theirs, y_ours = y.clone(), y.clone()
    lora_ops.bgmv_expand(rows, b, y_theirs, idx, True)
    lora_cpu_ops.bgmv_expand(rows, b, y_ours, idx, True)
    assert_same(y_ours, y_theirs)
    seq_lens = torch.tensor([2, 3, 4])  # segments of the prefill (sgmv) form
    segments, starts = torch.tensor([1, -1, 4]), torch.tensor([0, 2, 5])
    theirs, ours = torch.zeros(9, RANK), torch.zeros(9, RANK)
    lora_ops.sgmv_shrink(x, a, theirs, starts, seq_lens, segments, 3, 4, 9, 1.0)
    lora_cpu_ops.sgmv_shrink(x, a, ours, starts, seq_lens, segments, 3, 4, 9, 1.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tokens", [1, 2, 3, 64, 700])
def test_bf16_expand_adds_in_vllms_order(tokens: int) -> None:
    """Values over a wide range of magnitudes, where the order of the fp32 sum over the
    rank shows in the bf16 result."""
    if not lora_cpu_ops.load_kernel():
        pytest.skip("the C++ kernel did not build here")
    gen = torch.Generator().manual_seed(tokens)

    def wide(*shape: int) -> torch.Tensor:
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        scale = 2.0 ** -torch.randint(0, 14, shape, generator=gen).float()
        return (sign * scale * (1 + torch.rand(*shape, generator=gen))).to(torch.bfloat16)

    buf, b = wide(tokens, RANK).float(), wide(8, 1, 192, RANK)
    idx = torch.randint(0, 8, (tokens,), generator=gen)
    for _ in range(max(1, 4000 // tokens)):
        y = torch.zeros(tokens, 192, dtype=torch.bfloat16)
        theirs, ours = y.clone(), y.clone()
        lora_ops.bgmv_expand_slice(buf, b, theirs, idx, 0, 192, True)
        lora_cpu_ops.bgmv_expand_slice(buf, b, ours, idx, 0, 192, True)
        assert torch.equal(ours, theirs)
        buf, b = wide(tokens, RANK).float(), wide(8, 1, 192, RANK)


def test_zero_slots_are_skipped_with_the_same_result() -> None:
    if not lora_cpu_ops.load_kernel():
        pytest.skip("the C++ kernel did not build here")
    gen = torch.Generator().manual_seed(5)
    d_in, slices = LAYERS["qkv"]
    a = tuple(stack(gen, torch.bfloat16, SLOTS, 1, RANK, d_in) for _ in slices)
    b = tuple(stack(gen, torch.bfloat16, SLOTS, 1, n, RANK) for n in slices)
    a[1].zero_()  # an adapter of q and v only: its k slice is zero in every slot
    b[2][3].zero_()  # and one slot's v has no b
    for a_i, b_i in zip(a, b, strict=True):
        for slot in range(SLOTS):
            lora_cpu_ops.note_slot(a_i, b_i, slot)
    assert lora_cpu_ops.live_slots(a[1]).tolist() == [False] * SLOTS
    assert lora_cpu_ops.live_slots(a[2]).tolist() == [True, True, True, False, True, True]
    idx = PATTERNS["with_base"](12)
    x, y = stack(gen, torch.bfloat16, 12, d_in), stack(gen, torch.bfloat16, 12, sum(slices))
    theirs, ours = y.clone(), y.clone()
    vllm_linear(theirs, x, a, b, idx, slices, 1.0)
    lora_cpu_ops.lora_linear(ours, x, a, b, idx, 1.0, slices)
    assert torch.equal(ours, theirs)


def test_the_switch_installs_either_path() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    os.environ[lora_cpu_ops.ENV] = "vllm"
    try:
        vllm_fixes.register()
        assert not lora_cpu_ops.active() and vllm_fixes.installed()
        assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    finally:
        os.environ.pop(lora_cpu_ops.ENV)
    vllm_fixes.register()  # the default
    assert lora_cpu_ops.active() and vllm_fixes.installed()
    assert punica_cpu.bgmv_shrink is lora_cpu_ops.bgmv_shrink


SCRIPT = '''
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the worker in this process
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
from services.server import lora_cpu_ops, vllm_fixes

def answers(model, adapters, ops):
    os.environ[lora_cpu_ops.ENV] = ops
    vllm_fixes.register()
    llm = LLM(model=model, dtype="bfloat16", enable_lora=True, max_lora_rank=8, max_loras=4,
              max_model_len=256, max_num_seqs=32, enforce_eager=True,
              gpu_memory_utilization=0.03, seed=0)
    prompts = ["the sea is", "a cat and a dog", "one two three four", "hello"]
    loras = [None] + [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters)]
    batch = [(p, lora) for p in prompts for lora in loras]  # one batch: base and adapters
    params = SamplingParams(max_tokens=24, temperature=0.0)
    outs = llm.generate([p for p, _ in batch], params, lora_request=[l for _, l in batch])
    result = {"tokens": [list(o.outputs[0].token_ids) for o in outs],
              "active": lora_cpu_ops.active(), "kernel": lora_cpu_ops._state["kernel"],
              "zero_slices_known": len(lora_cpu_ops._LIVE)}
    del llm
    return result

if __name__ == "__main__":
    model, adapters = sys.argv[1], sys.argv[2:]
    print("RESULT " + json.dumps({ops: answers(model, adapters, ops) for ops in ("vllm", "fast")}))
'''


def test_greedy_answers_in_one_batch_are_the_same_with_either_ops(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    adapters = [str(make_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=700 + i))
                for i in range(3)]
    script = tmp_path / "lora_ops.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, str(script), str(tiny_model_dir), *adapters],
                         capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    theirs, ours = result["vllm"], result["fast"]
    assert not theirs["active"] and ours["active"]
    assert ours["zero_slices_known"] > 0, "adapter activations flag their zero slices"
    assert ours["kernel"] == bool(shutil.which("g++") or shutil.which("c++"))
    per_prompt = [theirs["tokens"][i:i + 4] for i in range(0, 16, 4)]
    assert all(len({tuple(t) for t in group}) > 1 for group in per_prompt), \
        "the adapters change the answers (else the comparison shows nothing)"
    assert ours["tokens"] == theirs["tokens"]
