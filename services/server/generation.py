"""Generate: N candidates streamed from the engine, each recorded on Kafka.

A candidate's final piece is sent only after its generation record was
acknowledged (bounded wait), so feedback on a finished response always finds
its generation in the log. Leaving the stream early aborts the engine work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from services.contract.errors import ContextTooLong, ResourceExhausted, Unavailable
from services.contract.records import GenerationRecord
from services.server.arms import ArmChoice, choose_arm
from services.server.config import ServerConfig
from services.server.diversity import candidate_temperatures
from services.server.engine import Engine, Sampling
from services.server.hot_swap import AdapterManager
from services.server.kafka_io import DurableProducer
from services.server.metrics import ServerMetrics
from services.server.response_ids import ResponseRef, ResponseSigner
from services.server.routing import AdapterSlot
from services.server.validation import GenerateParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of one candidate."""

    response_id: str
    candidate_index: int
    text: str
    finished: bool
    adapter_version: str
    finish_reason: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    """Tokens of the templated prompt (set on the finished piece)."""


@dataclass(frozen=True)
class _Call:
    params: GenerateParams
    prompt_ids: list[int]
    group_id: str
    slot: AdapterSlot | None
    started: float
    arm: ArmChoice | None = None
    """The candidate answered by a comparison arm (arms.py), if any."""
    parent: AdapterSlot | None = None
    """The parent arm's adapter, held for the call."""
    temperatures: tuple[float, ...] = ()
    """Each candidate's sampling temperature (diversity.py); empty: the requested one."""

    def temperature(self, index: int) -> float:
        return self.temperatures[index] if self.temperatures else self.params.temperature

    def engine_slot(self, index: int) -> AdapterSlot | None:
        """The adapter that answers candidate ``index`` (None: the base model)."""
        if self.arm is None or self.arm.index != index:
            return self.slot
        return self.parent if self.arm.arm == "parent" else None


class GenerationService:
    def __init__(self, cfg: ServerConfig, engine: Engine, adapters: AdapterManager,
                 producer: DurableProducer, signer: ResponseSigner, metrics: ServerMetrics,
                 replica: str) -> None:
        self._cfg = cfg
        self._engine = engine
        self._adapters = adapters
        self._producer = producer
        self._signer = signer
        self._metrics = metrics
        self._replica = replica
        self._running = 0
        self._rng = random.Random(cfg.comparison_seed)

    @property
    def running(self) -> int:
        return self._running

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        # 1. admission: bounded concurrent streams
        if self._running >= self._cfg.max_concurrent_streams:
            raise ResourceExhausted(
                f"server is at its limit of {self._cfg.max_concurrent_streams} streams; retry")
        # 2. prompt: chat template, then the context bound
        prompt_ids = self._engine.encode_chat(params.messages)
        limit = self._engine.max_model_len
        if len(prompt_ids) + params.max_tokens > limit:
            raise ContextTooLong(
                f"prompt is {len(prompt_ids)} tokens; with max_tokens {params.max_tokens} it "
                f"exceeds the context of {limit} tokens")
        self._running += 1
        self._metrics.running.set(self._running)
        try:
            adapter = (contextlib.nullcontext((None, None)) if params.base_model
                       else self._adapters.use_with_parent(params.user_id))
            async with adapter as (slot, parent), self._lora_cache(slot):
                arm = choose_arm(self._rng, self._cfg.comparison_rate, params.num_candidates,
                                 slot.version if slot else "", parent.version if parent else "",
                                 seeded=params.seed is not None)
                temperatures = candidate_temperatures(
                    params.temperature, params.num_candidates,
                    self._cfg.candidate_temperature_spread, self._cfg.limits.max_temperature)
                call = _Call(params, prompt_ids, uuid.uuid4().hex, slot, time.perf_counter(),
                             arm, parent, tuple(temperatures))
                if arm is not None:
                    self._metrics.comparison_candidates.labels(arm.arm).inc()
                async with self._lora_cache(parent if arm and arm.arm == "parent" else None):
                    async for chunk in self._merge(call):
                        yield chunk
        finally:
            self._running -= 1
            self._metrics.running.set(self._running)

    @contextlib.asynccontextmanager
    async def _lora_cache(self, slot: AdapterSlot | None) -> AsyncIterator[None]:
        """Hold the call's adapter in the engine; count a LoRA cache hit or miss."""
        if slot is None:
            yield
            return
        with self._engine.hold_adapter(slot) as hit:
            self._metrics.lora_cache.labels("hit" if hit else "miss").inc()
            yield

    async def _merge(self, call: _Call) -> AsyncIterator[Chunk]:
        """Run every candidate concurrently; yield their pieces as they come."""
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        request_ids = [f"{call.group_id}-{i}" for i in range(call.params.num_candidates)]
        tasks = [asyncio.create_task(self._candidate(call, i, rid, queue))
                 for i, rid in enumerate(request_ids)]
        first = True
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if first and item.text:
                    self._metrics.ttft.observe(time.perf_counter() - call.started)
                    first = False
                remaining -= item.finished
                yield item
        finally:
            unfinished = [rid for rid, t in zip(request_ids, tasks, strict=True) if not t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if unfinished:
                await self._engine.abort(unfinished)

    async def _candidate(self, call: _Call, index: int, request_id: str,
                         queue: asyncio.Queue[Chunk | BaseException]) -> None:
        p = call.params
        seed = None if p.seed is None else p.seed + index
        sampling = Sampling(p.max_tokens, call.temperature(index), p.top_p, seed)
        version = call.slot.version if call.slot else ""  # what the client is told
        engine_slot = call.engine_slot(index)
        arm = call.arm.arm if call.arm and call.arm.index == index else "served"
        response_id = self._signer.sign(
            ResponseRef(p.user_id, call.group_id, index, int(time.time() * 1000)))
        texts: list[str] = []
        tokens: list[int] = []
        reason = ""
        last = time.perf_counter()
        try:
            with self._metrics.engine_request() as first_output:
                async for delta in self._engine.stream(request_id, call.prompt_ids, sampling,
                                                       engine_slot):
                    first_output()
                    now = time.perf_counter()
                    if tokens and delta.token_ids:
                        self._metrics.inter_token.observe((now - last) / len(delta.token_ids))
                    last = now
                    texts.append(delta.text)
                    tokens.extend(delta.token_ids)
                    reason = delta.finish_reason or reason
                    if delta.text:
                        await queue.put(Chunk(response_id, index, delta.text, False, version))
            self._metrics.tokens.labels("personal" if engine_slot else "base").inc(len(tokens))
            record = GenerationRecord(
                response_id=response_id, group_id=call.group_id, user_id=p.user_id,
                candidate_index=index, num_candidates=p.num_candidates,
                messages=[asdict(m) for m in p.messages], prompt_token_ids=call.prompt_ids,
                completion="".join(texts), completion_token_ids=tokens,
                finish_reason=reason or "stop", adapter_version=version,
                base_model=self._engine.model_id, created_at=time.time(), replica=self._replica,
                sampling={"max_tokens": p.max_tokens, "temperature": sampling.temperature,
                          "requested_temperature": p.temperature, "top_p": p.top_p,
                          "seed": seed},
                arm=arm, arm_version=engine_slot.version if arm == "parent" and engine_slot else "",
            )
            await self._record(record)
            await queue.put(Chunk(response_id, index, "", True, version, reason or "stop",
                                  len(tokens), len(call.prompt_ids)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - surfaced to the stream's reader
            await queue.put(exc)

    async def _record(self, record: GenerationRecord) -> None:
        try:
            await self._producer.send(self._cfg.kafka.generations_topic, record.user_id,
                                      record.to_json())
        except Unavailable as exc:
            # Generate keeps serving while Kafka is down; feedback on this
            # response cannot be joined by the trainer and is dead-lettered.
            log.warning("generation %s not recorded: %s", record.response_id, exc)
