"""Fixes to vLLM that the service needs, applied in every vLLM process.

vLLM loads the ``vllm.general_plugins`` entry points (see pyproject.toml) in each of
its processes, the engine core and the model worker included, so ``register`` runs
wherever the model runs. The server also calls it before it starts an engine.

No-LoRA tokens on the CPU backend
---------------------------------
vLLM marks the tokens of a request without an adapter with the LoRA index -1. Its
GPU kernels skip such tokens; the pure-PyTorch ops of the CPU backend gather
``weights[indices]``, where -1 picks the *last* adapter slot. In a batch that mixes
base-model and adapter requests, the base requests were therefore answered with
whatever user's adapter sat in the last slot: wrong answers, and one user's
personalisation leaking into another's (reported upstream as vLLM PR #48421).

The wrapped ops zero the input rows of -1 tokens and gather a valid slot for them,
so their LoRA delta is exactly 0; rows with an adapter are computed as before.

Faster multi-LoRA on the CPU backend
------------------------------------
Unless ``PERSONALIZE_LORA_CPU_OPS=vllm`` (``EngineConfig.lora_cpu_ops``), the CPU punica
wrapper runs ``lora_cpu_ops.py`` instead of vLLM's torch ops: the same numerics without
a per-token copy of the adapters' weights, and no delta for -1 tokens either.

Seeded requests on the CPU backend
----------------------------------
A seeded request whose prompt is prefilled over several steps killed the engine (a CPU
generator cannot be rewound by offset); ``vllm_seeded.py`` makes it rewindable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
_MARK = "_personalize_skips_no_lora"


def skip_no_lora(op: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a torch ``bgmv_*`` op ``(inputs, weights, output, indices, ...)`` so tokens
    with index -1 get no LoRA delta."""
    if getattr(op, _MARK, False):
        return op

    @functools.wraps(op)
    def wrapped(inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor,
                indices: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        none = indices < 0  # (T,) tokens without an adapter
        if inputs.shape[0] == indices.shape[0] and bool(none.any()):
            inputs = inputs.masked_fill(none.unsqueeze(-1), 0)  # (T, D): delta is exactly 0
            indices = indices.clamp(min=0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    setattr(wrapped, _MARK, True)
    return wrapped


def register() -> None:
    """Install the fixes (idempotent); the ``vllm.general_plugins`` entry point."""
    from services.server import lora_cpu_ops, vllm_seeded

    vllm_seeded.register()  # seeded sampling on the CPU backend (see vllm_seeded.py)
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError as exc:  # a vLLM without these modules has nothing to fix here
        log.debug("vLLM CPU LoRA ops not found: %s", exc)
        return
    for name in _OPS:
        fixed = skip_no_lora(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)  # what the sgmv_* prefill ops call
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)  # what the CPU wrapper imported
    if lora_cpu_ops.mode() == "fast":
        lora_cpu_ops.install()  # its ops give -1 tokens no delta by construction
        for op in lora_cpu_ops.OPS.values():
            setattr(op, _MARK, True)
    else:
        lora_cpu_ops.uninstall({n: getattr(lora_ops, n) for n in lora_cpu_ops.OPS})


ENTRY_POINT = "personalize_fixes"


def check_plugin_enabled() -> None:
    """Raise unless vLLM will load ``register`` in its own processes: the package must be
    installed (so its entry point exists) and not left out by ``VLLM_PLUGINS``."""
    import os
    from importlib.metadata import entry_points

    if ENTRY_POINT not in {ep.name for ep in entry_points(group="vllm.general_plugins")}:
        raise RuntimeError(
            f"the vllm.general_plugins entry point {ENTRY_POINT!r} is not installed, so "
            "vLLM's model worker would run without the no-LoRA fix and answer base-model "
            "requests with another user's adapter; install the package (pip install -e .)")
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and ENTRY_POINT not in allowed.split(","):
        raise RuntimeError(f"VLLM_PLUGINS={allowed!r} leaves out {ENTRY_POINT!r}; add it")


def installed() -> bool:
    """Whether the fixes are installed in this process: the CPU LoRA ops, and the
    seeded-sampling wrappers of the model runner and the sampler."""
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from services.server.vllm_seeded import WRAPPED

    return (all(getattr(getattr(punica_cpu, n), _MARK, False) for n in _OPS)
            and all(getattr(f, WRAPPED, False)
                    for f in (GPUModelRunner._update_states, Sampler.forward)))
