"""Seeded sampling on vLLM's CPU backend: a rewindable generator (installed by
``vllm_fixes.register`` in every vLLM process).

When a request's prompt is prefilled over several engine steps (its prompt, or several
prompts together, exceed the step's token budget), vLLM samples a token for it at each
partial step, discards it, and rewinds the request's seeded generator with
``set_offset(get_offset() - 4)``, so the seed gives the same answer however the prompt
was split. That is a CUDA Philox offset; a CPU ``torch.Generator`` has none and raises
"CPU Generator does not use offset", which kills the engine: any client that sends a
``seed`` with a long prompt, or under load, took the server down.

Here every seeded CPU generator becomes a :class:`RewindableGenerator`: the sampler
saves its state before each step's sampling, and ``set_offset`` restores that state,
so a discarded sample leaves the generator as it was, which is what the rewind means.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

WRAPPED = "_personalize_rewindable"


class RewindableGenerator(torch.Generator):
    """A CPU generator whose ``set_offset`` goes back to the state saved by ``save``."""

    saved: torch.Tensor

    @classmethod
    def copy_of(cls, source: torch.Generator) -> RewindableGenerator:
        """A rewindable generator in ``source``'s state."""
        gen = cls(device="cpu")
        gen.set_state(source.get_state())
        gen.saved = gen.get_state()
        return gen

    def save(self) -> None:
        """Remember the state before a step samples with this generator."""
        self.saved = self.get_state()

    def get_offset(self) -> int:
        return 0

    def set_offset(self, offset: int) -> None:
        """Undo the step's sample: back to the state saved before it."""
        self.set_state(self.saved)


def _rewindable(gen: Any, made: dict[int, RewindableGenerator]) -> Any:
    """``gen`` as a RewindableGenerator when it is a plain CPU one (one object per
    generator: the request's state and the batch share it)."""
    if type(gen) is not torch.Generator or gen.device.type != "cpu":
        return gen
    if id(gen) not in made:
        made[id(gen)] = RewindableGenerator.copy_of(gen)
    return made[id(gen)]


def rewindable_states(update_states: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the model runner's ``_update_states``: afterwards every seeded CPU generator
    of its requests and of its input batch is a RewindableGenerator."""
    if getattr(update_states, WRAPPED, False):
        return update_states

    @functools.wraps(update_states)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = update_states(self, *args, **kwargs)
        made: dict[int, RewindableGenerator] = {}
        for req in self.requests.values():
            if getattr(req, "generator", None) is not None:
                req.generator = _rewindable(req.generator, made)
        generators = self.input_batch.generators
        for index, gen in list(generators.items()):
            generators[index] = _rewindable(gen, made)
        return out

    setattr(wrapped, WRAPPED, True)
    return wrapped


def saving_states(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``Sampler.forward``: save each rewindable generator before sampling."""
    if getattr(forward, WRAPPED, False):
        return forward

    @functools.wraps(forward)
    def wrapped(self: Any, logits: torch.Tensor, sampling_metadata: Any, *args: Any,
                **kwargs: Any) -> Any:
        for gen in (sampling_metadata.generators or {}).values():
            if isinstance(gen, RewindableGenerator):
                gen.save()
        return forward(self, logits, sampling_metadata, *args, **kwargs)

    setattr(wrapped, WRAPPED, True)
    return wrapped


def register() -> bool:
    """Install both wrappers; False when this vLLM has neither place to wrap."""
    try:
        from vllm.v1.sample.sampler import Sampler
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:
        return False
    GPUModelRunner._update_states = rewindable_states(GPUModelRunner._update_states)
    Sampler.forward = saving_states(Sampler.forward)
    return True

