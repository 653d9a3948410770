"""Typed, frozen configuration of the inference server, parsed once at its entry point
(``PERSONALIZE_SERVER_<FIELD>`` or ``--<field>``; see services/contract/config.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.contract.auth import AuthConfig
from services.contract.config import ConfigError, KafkaConfig
from services.server.diversity import check_spread


@dataclass(frozen=True)
class EngineConfig:
    """The vLLM engine and the base model it serves."""

    model: str = ".cache/models/SmolLM2-135M-Instruct"
    """HF model directory served as the base model."""
    model_id: str = ""
    """Stable name of the base model recorded in records and adapter manifests
    (defaults to the directory name)."""
    dtype: str = "auto"
    """Weights dtype passed to vLLM ("auto", "bfloat16", "float32")."""
    max_model_len: int = 2048
    """Context length (prompt + completion)."""
    max_lora_rank: int = 8
    """Largest LoRA rank accepted."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj")
    """Modules an adapter may adapt; an adapter naming others is refused
    (empty: any)."""
    max_loras: int = 8
    """Adapters active in one batch."""
    max_cpu_loras: int = 32
    """Adapters cached in host memory (least recently used are evicted)."""
    gpu_memory_utilization: float = 0.3
    """Fraction of device memory for the engine (the CPU backend checks it
    against one NUMA node)."""
    enforce_eager: bool = True
    """Skip graph capture / compilation (faster start-up)."""
    max_num_seqs: int = 64
    """Sequences the engine schedules at once."""
    seed: int = 0
    """Engine seed."""
    lora_cpu_ops: str = "fast"
    """Multi-LoRA ops of vLLM's CPU backend: ``fast`` (services/server/lora_cpu_ops.py:
    each token reads its adapter's weights in place, a C++ kernel built once under
    .cache/torch-extensions, grouped PyTorch ops where it cannot be built) or ``vllm``
    (vLLM's own torch ops, which copy every token's adapter weights). Same greedy
    outputs; exported to the engine's processes as ``PERSONALIZE_LORA_CPU_OPS``."""

    def __post_init__(self) -> None:
        if self.lora_cpu_ops not in ("fast", "vllm"):
            raise ConfigError(f"lora_cpu_ops must be 'fast' or 'vllm', not {self.lora_cpu_ops!r}")

    @property
    def served_model_id(self) -> str:
        return self.model_id or os.path.basename(os.path.normpath(self.model))


@dataclass(frozen=True)
class GenerationLimits:
    """Bounds on what one Generate call may ask for."""

    default_max_tokens: int = 128
    """max_tokens used when the request leaves it at 0."""
    max_tokens_limit: int = 1024
    """Largest max_tokens accepted."""
    max_candidates: int = 4
    """Largest num_candidates accepted."""
    max_messages: int = 64
    """Most chat messages in one request."""
    max_message_chars: int = 16000
    """Longest content of one message."""
    default_temperature: float = 0.7
    """Temperature used when the request leaves it unset."""
    max_temperature: float = 2.0
    """Largest temperature accepted."""


@dataclass(frozen=True)
class ServerConfig:
    """The inference server: gRPC, and the OpenAI-compatible HTTP API."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds."""
    port: int = 50051
    """gRPC port."""
    metrics_port: int = 9400
    """Port of the Prometheus /metrics endpoint (0 disables it)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    http_port: int = 8000
    """Port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/feedback,
    ...) served on ``host`` by the same process and engine (0 disables it)."""
    http_max_body_bytes: int = 4 * 1024 * 1024
    """Largest HTTP request body accepted; a bigger one is answered 413."""
    http_cors_origins: tuple[str, ...] = ()
    """Origins (``https://chat.example.com``, comma-separated; ``*`` for any) whose web
    pages may call the HTTP API from a browser (CORS). Empty: none but the server's own
    chat page, which needs no CORS."""
    adapter_store: str = ".cache/adapters"
    """Root of the adapter store: <root>/<user_id>/<version>/."""
    response_keys: str = ""
    """Comma-separated secrets that sign response ids; the first signs, all
    verify (rotation). Empty: a key generated once and kept in
    <adapter_store>/.response-key, so replicas sharing the store agree."""
    max_concurrent_streams: int = 256
    """Generate calls in flight before RESOURCE_EXHAUSTED."""
    max_concurrent_rpcs: int = 1024
    """Calls of any kind the gRPC server holds at once (running or queued)
    before it answers RESOURCE_EXHAUSTED."""
    drain_timeout_s: float = 30.0
    """Grace period for in-flight streams at shutdown."""
    store_rescan_s: float = 30.0
    """Period of the adapter-store rescan that backs up the update topic
    (0 disables it)."""
    comparison_rate: float = 0.25
    """Probability that a Generate call asking for two or more candidates (and no
    seed) has one of them drawn from a comparison arm, the base model or the served
    adapter's parent version, instead of the user's adapter: online evaluation by
    the user's own rankings. Recorded on Kafka, never shown to the client. 0 disables."""
    comparison_seed: int | None = None
    """Seed of the draws that choose which calls carry a comparison arm, and which one:
    None draws them from the OS; a seed makes a replica's sequence of draws repeatable
    (a replay, a test)."""
    candidate_temperature_spread: float = 0.0
    """Diversified candidates: the width of the temperature range the candidates of a
    call for two or more are sampled across, centred on the requested temperature
    (candidate i of n at ``t + spread * (i / (n - 1) - 1/2)``, clamped to
    [0.05, ``limits.max_temperature``]; services/server/diversity.py). Greedy requests
    (temperature 0) are left alone. 0 disables (every candidate at the requested
    temperature), the default: with SmolLM2 and the current reward model, bench.diversity
    measured a gain at 5 rankings per user and none established from 10 on
    (docs/benchmarks.md)."""
    limits: GenerationLimits = field(default_factory=GenerationLimits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def __post_init__(self) -> None:
        if problem := check_spread(self.candidate_temperature_spread):
            raise ConfigError(problem)
