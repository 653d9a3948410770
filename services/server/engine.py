"""The vLLM edge: chat-template encoding, streaming generation, LoRA loading.

The core talks to the small :class:`Engine` protocol; :class:`VllmEngine`
implements it on ``vllm.v1.engine.async_llm.AsyncLLM`` with LoRA enabled.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from services.server.config import EngineConfig
from services.server.routing import AdapterSlot, LoraCacheModel
from services.server.validation import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None


@dataclass(frozen=True)
class Delta:
    """New text and token ids of one candidate since its previous delta."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None


class Engine(Protocol):
    model_id: str
    max_model_len: int

    def encode_chat(self, messages: Sequence[Message]) -> list[int]: ...

    def stream(self, request_id: str, prompt_ids: list[int], sampling: Sampling,
               adapter: AdapterSlot | None) -> AsyncIterator[Delta]: ...

    async def abort(self, request_ids: Sequence[str]) -> None: ...

    @property
    def dead(self) -> bool:
        """True once the engine failed for good (e.g. its worker process was killed)."""
        ...

    async def load_adapter(self, slot: AdapterSlot) -> None: ...

    async def unload_adapter(self, slot: AdapterSlot) -> None: ...

    def hold_adapter(self, slot: AdapterSlot) -> AbstractContextManager[bool]:
        """Hold ``slot`` for one request's engine work; yields True if the
        version was loaded in the engine already (a LoRA cache hit), False if
        the engine reads it from the store first (a miss)."""
        ...


class VllmEngine:
    """An AsyncLLM serving one base model and any number of LoRA versions."""

    def __init__(self, cfg: EngineConfig) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.server import lora_cpu_ops
        from services.server.vllm_fixes import check_plugin_enabled, register

        check_plugin_enabled()  # vLLM's own processes load the fixes by the entry point
        os.environ[lora_cpu_ops.ENV] = cfg.lora_cpu_ops  # read there by the plugin
        register()
        start = time.perf_counter()
        args = AsyncEngineArgs(
            model=cfg.model, enable_lora=True, max_lora_rank=cfg.max_lora_rank,
            max_loras=cfg.max_loras, max_cpu_loras=cfg.max_cpu_loras,
            max_model_len=cfg.max_model_len, dtype=cfg.dtype,
            enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs,
            gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed,
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._llm.get_tokenizer()
        self.model_id = cfg.served_model_id
        self.max_model_len = cfg.max_model_len
        self._lora_cache = LoraCacheModel(cfg.max_cpu_loras)
        self.startup_seconds = time.perf_counter() - start
        log.info("vLLM engine for %s ready in %.1fs", cfg.model, self.startup_seconds)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        encoded = self._tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    async def stream(self, request_id: str, prompt_ids: list[int], sampling: Sampling,
                     adapter: AdapterSlot | None) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=1, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, seed=sampling.seed, output_kind=RequestOutputKind.DELTA,
        )
        lora = None
        if adapter is not None:
            lora = LoRARequest(adapter.lora_name, adapter.lora_int_id, adapter.path)
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                     request_id, lora_request=lora)
        async for out in outputs:
            piece = out.outputs[0]
            yield Delta(piece.text, tuple(piece.token_ids), piece.finish_reason)

    async def abort(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            await self._llm.abort(list(request_ids))

    @property
    def dead(self) -> bool:
        return bool(self._llm.errored)

    async def load_adapter(self, slot: AdapterSlot) -> None:
        from vllm.lora.request import LoRARequest

        await self._llm.add_lora(LoRARequest(slot.lora_name, slot.lora_int_id, slot.path))
        self._lora_cache.load(slot.lora_int_id)

    async def unload_adapter(self, slot: AdapterSlot) -> None:
        self._lora_cache.remove(slot.lora_int_id)
        await self._llm.remove_lora(slot.lora_int_id)

    @contextmanager
    def hold_adapter(self, slot: AdapterSlot) -> Iterator[bool]:
        hit = self._lora_cache.acquire(slot.lora_int_id)
        try:
            yield hit
        finally:
            self._lora_cache.release(slot.lora_int_id)

    def shutdown(self) -> None:
        """Stop the engine processes; idempotent."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
            del llm  # collected now, not during interpreter teardown
