"""Micro-benchmark of the CPU multi-LoRA ops at decode sizes: vLLM's torch ops, the
grouped PyTorch version, a torch.compile'd gather-and-reduce, and the C++ kernel
(services/server/lora_cpu_ops.py), on one step of all adapted layers of SmolLM2-135M
(30 layers; qkv, o, gate_up and down, rank 8), tokens on distinct or on one adapter.
With ``--targets qv`` (the default, the service's adapters) only the q and v slices are
non-zero and the kernel knows it, as after vLLM activated the adapters.

    python -m bench.lora_ops [--tokens 1,8,64] [--slots 64] [--targets qv|all]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench.common import median, settle, table, write_result
from services.server import lora_cpu_ops

HIDDEN, INTER, KV = 576, 1536, 192
LAYER = {"qkv": (HIDDEN, (HIDDEN, KV, KV)), "o": (HIDDEN, (HIDDEN,)),
         "gate_up": (HIDDEN, (INTER, INTER)), "down": (INTER, (HIDDEN,))}
Weights = dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]


QV = {("qkv", 0), ("qkv", 2)}


def make_layer(slots: int, rank: int, dtype: torch.dtype, gen: torch.Generator,
               targets: str = "all") -> Weights:
    """Stacked LoRA weights of one decoder layer, as vLLM holds them:
    a (slots, 1, rank, in), b (slots, 1, out, rank) per slice; with ``targets="qv"``
    only q and v are non-zero, and every slot is flagged as after its activation."""
    def rand(name: str, i: int, *shape: int) -> torch.Tensor:
        w = torch.randn(*shape, generator=gen) * 0.05
        return (w if targets == "all" or (name, i) in QV else torch.zeros(*shape)).to(dtype)

    layer = {name: (tuple(rand(name, i, slots, 1, rank, d_in) for i in range(len(outs))),
                    tuple(rand(name, i, slots, 1, o, rank) for i, o in enumerate(outs)))
             for name, (d_in, outs) in LAYER.items()}
    for a, b in layer.values():
        for a_i, b_i in zip(a, b, strict=True):
            for slot in range(slots):
                lora_cpu_ops.note_slot(a_i, b_i, slot)
    return layer


def vllm_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                b: tuple[torch.Tensor, ...], idx: torch.Tensor, slices: tuple[int, ...]) -> None:
    """What PunicaWrapperCPU.add_lora_linear runs: shrink and expand per slice."""
    from vllm.lora.ops.torch_ops import lora_ops

    offset = 0
    for wa, wb, size in zip(a, b, slices, strict=True):
        buf = torch.zeros(x.shape[0], wb.shape[-1], dtype=torch.float32)
        lora_ops.bgmv_shrink(x, wa, buf, idx, 1.0)
        lora_ops.bgmv_expand_slice(buf, wb, y, idx, offset, size, True)
        offset += size


@torch.compile(dynamic=True)
def _compiled_slice(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    idx: torch.Tensor) -> torch.Tensor:
    buf = (x.float()[:, None, :] * a[idx, 0].float()).sum(-1)  # (T, R) fp32
    return (buf.to(x.dtype).float()[:, None, :] * b[idx, 0].float()).sum(-1).to(x.dtype)


def compiled_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                    b: tuple[torch.Tensor, ...], idx: torch.Tensor,
                    slices: tuple[int, ...]) -> None:
    """A torch.compile'd gather-and-reduce per slice (inductor fuses the gather)."""
    offset = 0
    for wa, wb, size in zip(a, b, slices, strict=True):
        y[:, offset:offset + size] += _compiled_slice(x, wa, wb, idx)
        offset += size


def grouped_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                   b: tuple[torch.Tensor, ...], idx: torch.Tensor,
                   slices: tuple[int, ...]) -> None:
    lora_cpu_ops._state["kernel"] = False
    try:
        lora_cpu_ops.lora_linear(y, x, a, b, idx, 1.0, slices)
    finally:
        lora_cpu_ops._state["kernel"] = True


def kernel_linear(y: torch.Tensor, x: torch.Tensor, a: tuple[torch.Tensor, ...],
                  b: tuple[torch.Tensor, ...], idx: torch.Tensor,
                  slices: tuple[int, ...]) -> None:
    lora_cpu_ops.lora_linear(y, x, a, b, idx, 1.0, slices)


IMPLS: dict[str, Callable[..., None]] = {"vllm": vllm_linear, "grouped": grouped_linear,
                                         "compiled": compiled_linear, "kernel": kernel_linear}


def time_step(impl: Callable[..., None], layers: list[Weights], tokens: int,
              idx: torch.Tensor, dtype: torch.dtype) -> float:
    """Seconds for the LoRA of every adapted layer of one decode step."""
    x = {d: torch.randn(tokens, d).to(dtype) for d in (HIDDEN, INTER)}
    ys = {n: torch.zeros(tokens, sum(LAYER[n][1]), dtype=dtype) for n in LAYER}
    start = time.perf_counter()
    for layer in layers:
        for name, (a, b) in layer.items():
            impl(ys[name], x[LAYER[name][0]], a, b, idx, LAYER[name][1])
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="1,8,64")
    p.add_argument("--slots", type=int, default=64, help="adapter slots (max_loras)")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--targets", choices=("qv", "all"), default="qv",
                   help="modules the adapters adapt (the others' slices are zero)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    assert lora_cpu_ops.load_kernel(), "the C++ kernel did not build"
    gen = torch.Generator().manual_seed(0)
    layers = [make_layer(args.slots, 8, torch.bfloat16, gen, args.targets)
              for _ in range(args.layers)]
    rows, results = [], []
    for tokens in (int(t) for t in args.tokens.split(",")):
        for pattern in ("distinct", "one"):
            idx = (torch.arange(tokens) % args.slots if pattern == "distinct"
                   else torch.zeros(tokens, dtype=torch.long))
            ms = {}
            for impl in args.impls.split(","):
                time_step(IMPLS[impl], layers[:1], tokens, idx, torch.bfloat16)  # warm-up
                ms[impl] = 1000 * median([time_step(IMPLS[impl], layers, tokens, idx,
                                                    torch.bfloat16)
                                          for _ in range(args.repeats)])
            results.append({"tokens": tokens, "adapters": pattern, "ms_per_step": ms})
            rows.append([tokens, pattern, *(f"{v:.2f}" for v in ms.values())])
    print(table(["tokens", "adapters", *(f"{i} ms" for i in args.impls.split(","))], rows))
    write_result("lora_ops", vars(args), {"rows": results}, args.out)


if __name__ == "__main__":
    main()
