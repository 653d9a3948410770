"""Multi-LoRA ops for vLLM's CPU backend that do not copy each token's adapter weights.

vLLM's CPU punica wrapper (``vllm/lora/punica_wrapper/punica_cpu.py``) runs the LoRA of
every adapted layer through ``vllm/lora/ops/torch_ops``: per slice, ``weights[indices]``
gathers a (tokens, rank, hidden) copy of the adapters' weights, converts it, and runs a
batched einsum. At decode sizes that overhead, not the arithmetic, is most of a step.

Here each token reads its adapter's rows in place: a small C++ kernel
(``lora_cpu_ops.cpp``, built once per machine under ``.cache/torch-extensions`` and
loaded with ``torch.ops.load_library``), one call per adapted layer for all its slices.
Where the kernel cannot be built, a pure-PyTorch version groups the tokens by adapter
and runs one matmul per adapter. Both keep vLLM's numerics: the shrink accumulates in
fp32 and scales there, its output is cast to the model dtype before the expand, the
expand accumulates in fp32 and rounds once, and the add to the layer output happens in
the model dtype. Only the order of the fp32 sum over the hidden size differs from the
BLAS one (a last-bit difference in fp32, before the cast). Tokens without an adapter
(index -1) get no delta.

The choice is made per vLLM process by ``PERSONALIZE_LORA_CPU_OPS`` (``fast``, the
default, or ``vllm``), which the server sets from ``EngineConfig.lora_cpu_ops`` before
it starts the engine; ``vllm_fixes.register`` installs the ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ENV = "PERSONALIZE_LORA_CPU_OPS"
MODES = ("fast", "vllm")
SOURCE = Path(__file__).with_name("lora_cpu_ops.cpp")
BUILD_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "torch-extensions"
_state: dict[str, bool | None] = {"kernel": None}


def mode() -> str:
    """The ops this process should use: ``fast`` unless ``PERSONALIZE_LORA_CPU_OPS``
    says ``vllm``."""
    value = os.environ.get(ENV, "fast").strip().lower() or "fast"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {MODES}")
    return value


# --- the C++ kernel -----------------------------------------------------------------


def _cpu_tag() -> str:
    """A short hash of this CPU's instruction-set flags: the kernel is built with
    -march=native, so a build is only reused on a like machine."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags += line
                break
    except OSError:
        pass
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def load_kernel() -> bool:
    """Build (once, cached) and load the C++ kernel; False, logged, where that fails."""
    if _state["kernel"] is not None:
        return bool(_state["kernel"])
    try:
        _build_and_load()
        _state["kernel"] = True
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as exc:
        # no compiler, no headers, a failed build: the grouped PyTorch ops instead
        log.warning("LoRA CPU kernel unavailable (%s); using the grouped PyTorch ops", exc)
        _state["kernel"] = False
    return bool(_state["kernel"])


def _build_and_load() -> None:
    if hasattr(torch.ops.personalize_lora, "lora_linear"):
        return
    from torch.utils import cpp_extension

    try:  # the ninja wheel's binary, when the venv's bin is not on PATH
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    except ImportError:
        pass
    name = f"personalize_lora_{_cpu_tag()}"
    build_dir = BUILD_ROOT / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=name, sources=[str(SOURCE)], build_directory=str(build_dir),
                       extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
                       extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)


# --- pure-torch fallback: tokens grouped by adapter ---------------------------------


def _rows_by_slot(indices: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(slot, token rows) for every adapter slot used in ``indices`` (T,); -1 left out."""
    slots = indices.unique().tolist()
    return [(s, (indices == s).nonzero().squeeze(1)) for s in slots if s >= 0]


def _slot_weights(w: torch.Tensor, slot: int) -> torch.Tensor:
    """(rows, cols) weights of one slot of a (slots, [1,] rows, cols) stack (a view)."""
    return w[slot, 0] if w.dim() == 4 else w[slot]


def grouped_shrink(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, indices: torch.Tensor,
                   scale: float) -> None:
    """out[t, :rank] = scale * x[t] @ w[s].T in out's dtype; 0 where s < 0.
    x (T, D), w (L, [1,] R, D), out (T, >=R), indices (T,)."""
    rank = w.shape[-2]
    out[: indices.shape[0], :rank] = 0
    for slot, rows in _rows_by_slot(indices):
        a = _slot_weights(w, slot).to(out.dtype)  # (R, D)
        out[rows, :rank] = scale * (x[rows].to(out.dtype) @ a.T)


def grouped_expand(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                   offset: int, size: int, add: bool) -> None:
    """y[t, offset:+n] (+)= (x[t] @ w[s].T) in y's dtype; rows with s < 0 untouched when
    adding, zeroed otherwise. x (T, R), w (L, [1,] N, R), y (T, >=offset+N)."""
    n = min(size, w.shape[-2], y.shape[1] - offset)
    if not add:
        y[: indices.shape[0], offset:offset + n] = 0
    for slot, rows in _rows_by_slot(indices):
        b = _slot_weights(w, slot)[:n].to(y.dtype)  # (N, R)
        delta = x[rows].to(y.dtype) @ b.T  # (t, N)
        y[rows, offset:offset + n] = y[rows, offset:offset + n] + delta if add else delta


# --- vLLM-shaped entry points -------------------------------------------------------


def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                scaling: float = 1.0) -> None:
    """vLLM's ``bgmv_shrink`` (one slot index per token), without the gather."""
    indices = lora_indices_tensor.to(torch.long).contiguous()
    if _state["kernel"] and output_tensor.dtype == torch.float32 \
            and lora_a_weights.dtype == inputs.dtype:
        torch.ops.personalize_lora.shrink(inputs, lora_a_weights, output_tensor, indices,
                                          scaling)
    else:
        grouped_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    """vLLM's ``bgmv_expand_slice``, without the gather."""
    indices = lora_indices_tensor.to(torch.long).contiguous()
    if _state["kernel"] and inputs.dtype in (torch.float32, output_tensor.dtype) \
            and lora_b_weights.dtype == output_tensor.dtype:
        torch.ops.personalize_lora.expand(inputs, lora_b_weights, output_tensor, indices,
                                          slice_offset, slice_size, add_inputs)
    else:
        grouped_expand(inputs, lora_b_weights, output_tensor, indices, slice_offset,
                       slice_size, add_inputs)


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                add_inputs: bool = True) -> None:
    """vLLM's ``bgmv_expand``: the whole width of the output (or of the weights)."""
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, 0,
                      output_tensor.shape[1], add_inputs)


def _explode(fn: Callable[..., None]) -> Callable[..., None]:
    """An ``sgmv_*`` op (per-segment indices) from a ``bgmv_*`` one (per token)."""
    def sgmv(inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor,
             seq_start_loc: torch.Tensor, seq_lengths: torch.Tensor,
             segment_indices: torch.Tensor, batches: int, max_seq_length: int,
             token_nums: int, *args: Any) -> None:
        fn(inputs, weights, output, torch.repeat_interleave(segment_indices, seq_lengths),
           *args)

    sgmv.__name__ = fn.__name__.replace("bgmv", "sgmv")
    sgmv.__doc__ = f"vLLM's ``{sgmv.__name__}``: ``{fn.__name__}`` on per-token indices."
    return sgmv


sgmv_shrink = _explode(bgmv_shrink)
sgmv_expand = _explode(bgmv_expand)
sgmv_expand_slice = _explode(bgmv_expand_slice)
OPS: dict[str, Callable[..., None]] = {
    f.__name__: f for f in (bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink,
                            sgmv_expand, sgmv_expand_slice)}


# --- which adapter slots of a stacked weight are zero --------------------------------
# An adapter that does not adapt a module (k_proj, o_proj, the MLP for a q/v adapter)
# leaves that slice of its slot zero; its delta is exactly 0, so the kernel skips it.
# The flags are set when vLLM activates an adapter into a slot (the only place slot
# weights are written); a stack never seen there has none, and nothing is skipped.

_LIVE: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


def live_slots(a: torch.Tensor) -> torch.Tensor | None:
    """(slots,) bool: which slots of the stacked weight ``a`` hold a non-zero slice
    (with its b); None when unknown."""
    entry = _LIVE.get(id(a))
    return entry[1] if entry is not None and entry[0]() is a else None


def note_slot(a: torch.Tensor, b: torch.Tensor, slot: int) -> None:
    """Record whether ``slot`` of the stacked pair (a, b) is non-zero (after a write)."""
    flags = live_slots(a)
    if flags is None:
        flags = torch.ones(a.shape[0], dtype=torch.bool)
        _LIVE[id(a)] = (weakref.ref(a), flags)
    flags[slot] = bool(a[slot].any()) and bool(b[slot].any())


def note_activation(manager: Any, lora_id: int) -> None:
    """After vLLM's LoRAModelManager activated ``lora_id``: flag its slot in every
    module's stacked weights."""
    if lora_id not in manager.lora_index_to_id:
        return
    slot = manager.lora_index_to_id.index(lora_id)
    for module in manager.modules.values():
        a, b = getattr(module, "lora_a_stacked", None), getattr(module, "lora_b_stacked", None)
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            for a_i, b_i in zip(a, b, strict=True):
                note_slot(a_i, b_i, slot)


def lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: tuple[torch.Tensor, ...],
                lora_b: tuple[torch.Tensor, ...], indices: torch.Tensor, scale: float,
                slices: tuple[int, ...]) -> None:
    """y[:, slice i] += (scale * x @ a_i[s].T) @ b_i[s].T per token (add_lora_linear).
    y (T, sum(slices)), x (T, D), a_i (L, 1, R, D), b_i (L, 1, slices[i], R), indices (T,)."""
    indices = indices.to(torch.long).contiguous()
    same = all(w.dtype == x.dtype for w in (*lora_a, *lora_b)) and y.dtype == x.dtype
    if _state["kernel"] and same:
        live = [live_slots(a) for a in lora_a]
        torch.ops.personalize_lora.lora_linear(
            y, x, list(lora_a), list(lora_b), indices, scale, list(slices),
            live if all(f is not None for f in live) else [])
        return
    offset = 0
    for a, b, size in zip(lora_a, lora_b, slices, strict=True):
        buf = torch.zeros(x.shape[0], b.shape[-1], dtype=torch.float32)  # (T, R)
        grouped_shrink(x, a, buf, indices, scale)
        grouped_expand(buf, b, y, indices, offset, size, True)
        offset += size


# --- installation into vLLM's CPU punica wrapper ------------------------------------


def _add_lora_linear(self: Any, y: torch.Tensor, x: torch.Tensor,
                     lora_a_stacked: tuple[torch.Tensor, ...],
                     lora_b_stacked: tuple[torch.Tensor, ...], scale: float,
                     output_slices: tuple[int, ...], *, buffer: Any = None,
                     **kwargs: Any) -> None:
    """``PunicaWrapperCPU.add_lora_linear`` in one call for all slices: y (T, sum(slices))
    += LoRA(x (T, D)) per token's slot."""
    if self.is_prefill and self.no_lora:  # every token without an adapter
        return
    lora_linear(y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1]), lora_a_stacked,
                lora_b_stacked, self.token_lora_indices, scale, output_slices)


def _activate_adapter(self: Any, lora_id: int) -> bool:
    """``LoRAModelManager.activate_adapter``, then the slot's zero flags."""
    activated = _ORIGINAL["activate_adapter"](self, lora_id)
    if activated:
        note_activation(self, lora_id)
    return bool(activated)


_ORIGINAL: dict[str, Any] = {}


def _on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here (elsewhere the wrapper is unused)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def install() -> bool:
    """Use these ops in vLLM's CPU punica wrapper (idempotent); True when the C++ kernel
    runs them, False when the grouped PyTorch version does (or not on the CPU backend,
    where nothing is built)."""
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.lora.punica_wrapper import punica_cpu

    wrapper = punica_cpu.PunicaWrapperCPU
    _ORIGINAL.setdefault("add_lora_linear", wrapper.add_lora_linear)
    _ORIGINAL.setdefault("activate_adapter", LoRAModelManager.activate_adapter)
    kernel = _on_cpu() and load_kernel()  # built here, before the engine's processes
    for name, op in OPS.items():
        setattr(punica_cpu, name, op)
    wrapper.add_lora_linear = _add_lora_linear
    LoRAModelManager.activate_adapter = _activate_adapter
    log.info("LoRA CPU ops: %s", "C++ kernel" if kernel else "grouped PyTorch")
    return kernel


def uninstall(ops: dict[str, Callable[..., Any]]) -> None:
    """Back to vLLM's own path: ``ops`` (name -> vLLM's op, as the wrapper should call
    it) and the wrapper's own ``add_lora_linear``."""
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.lora.punica_wrapper import punica_cpu

    for name, op in ops.items():
        setattr(punica_cpu, name, op)
    if "add_lora_linear" in _ORIGINAL:
        punica_cpu.PunicaWrapperCPU.add_lora_linear = _ORIGINAL["add_lora_linear"]
        LoRAModelManager.activate_adapter = _ORIGINAL["activate_adapter"]


def active() -> bool:
    """Whether vLLM's CPU punica wrapper runs these ops in this process."""
    from vllm.lora.punica_wrapper import punica_cpu

    return punica_cpu.PunicaWrapperCPU.add_lora_linear is _add_lora_linear
