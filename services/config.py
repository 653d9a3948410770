"""Typed, frozen configuration for the serving side, parsed once at the entry point.

Every field can be set from the environment (``PERSONALIZE_<SECTION>_<FIELD>``,
e.g. ``PERSONALIZE_KAFKA_BOOTSTRAP_SERVERS``) or from command-line flags that
the entry points add with :func:`add_flags`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class KafkaConfig:
    """How both services reach Kafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the brokers."""
    generations_topic: str = "generations"
    """Topic of every served completion (key = user_id)."""
    feedback_topic: str = "feedback"
    """Topic of thumbs and rankings (key = user_id)."""
    adapter_updates_topic: str = "adapter-updates"
    """Topic on which the trainer announces newly published adapters."""
    dlq_suffix: str = "-dlq"
    """Suffix of each topic's dead-letter topic."""
    partitions: int = 3
    """Partitions of topics the stack creates (users are split by partition)."""
    replication_factor: int = 1
    """Replication factor of topics the stack creates."""
    client_id: str = "personalize"
    """Kafka client id prefix."""
    produce_timeout_s: float = 5.0
    """Bound on waiting for the broker's acknowledgement of one record."""
    max_block_s: float = 2.0
    """Bound on blocking in send() while broker metadata is unavailable."""
    bootstrap_timeout_s: float = 5.0
    """Bound on a consumer's first connection to the cluster (it retries after)."""
    session_timeout_ms: int = 6000
    """Consumer group session timeout."""
    heartbeat_interval_ms: int = 1000
    """Consumer group heartbeat interval."""
    max_poll_interval_ms: int = 300000
    """Longest time between polls before the consumer leaves the group."""
    fetch_max_wait_ms: int = 100
    """Longest time the broker holds a fetch waiting for data."""


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
class AuthConfig:
    """Per-user bearer tokens (HS256-signed JWTs) on every Assistant call."""

    secrets: str = ""
    """Comma-separated signing secrets, each at least 32 characters; the first
    signs new tokens, all verify (rotation). Empty, with no secrets_file: auth
    is OFF and anyone who reaches the port may act as any user (local default)."""
    secrets_file: str = ""
    """File holding the secrets (comma- or newline-separated), read at start-up;
    keeps them out of the environment and the process list."""
    issuer: str = "personalize"
    """The tokens' ``iss`` claim (issued and required)."""
    audience: str = "personalize.v1.Assistant"
    """The tokens' ``aud`` claim (issued and required)."""
    leeway_s: float = 30.0
    """Clock skew tolerated on ``exp`` and ``iat``."""


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC inference server."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds."""
    port: int = 50051
    """gRPC port."""
    metrics_port: int = 9400
    """Port of the Prometheus /metrics endpoint (0 disables it)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
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
    limits: GenerationLimits = field(default_factory=GenerationLimits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


def _field_type(cls: type, name: str) -> tuple[Any, bool]:
    """The field's type with ``| None`` removed, and whether it was optional."""
    hint = get_type_hints(cls)[name]
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None)), True
    return hint, False


def _parse_value(kind: Any, raw: str, optional: bool = False) -> Any:
    if optional and raw.strip().lower() in ("", "none", "null"):
        return None
    if get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    return kind(raw)


def from_mapping(cls: type[T], values: Mapping[str, str], prefix: str) -> T:
    """Build ``cls`` from string values named ``<prefix><FIELD>`` (upper case);
    nested config dataclasses use ``<prefix><FIELD>_`` as their prefix."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind, optional = _field_type(cls, f.name)
        key = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = from_mapping(kind, values, key + "_")  # type: ignore[arg-type]
        elif key in values:
            try:
                kwargs[f.name] = _parse_value(kind, values[key], optional)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from exc
    return cls(**kwargs)


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per field of ``cls`` (nested: ``--kafka-bootstrap-servers``)."""
    for f in fields(cls):
        kind, _ = _field_type(cls, f.name)
        name = f"{prefix}{f.name}".replace("_", "-")
        if dataclasses.is_dataclass(kind):
            add_flags(parser, kind, prefix=f"{prefix}{f.name}_")
            continue
        parser.add_argument(f"--{name}", dest=f"cfg__{prefix}{f.name}", default=None,
                            metavar=f.name.upper(),
                            help=f"default: {f.default!r}" if f.default is not MISSING else None)


def load(cls: type[T], section: str, args: argparse.Namespace | None = None,
         env: Mapping[str, str] | None = None) -> T:
    """Environment first, then flags that were given on the command line."""
    values = dict(os.environ if env is None else env)
    prefix = f"PERSONALIZE_{section.upper()}_"
    if args is not None:
        for key, raw in vars(args).items():
            if key.startswith("cfg__") and raw is not None:
                values[prefix + key.removeprefix("cfg__").upper()] = str(raw)
    return from_mapping(cls, values, prefix)


def parse_entry_point(cls: type[T], section: str, description: str,
                      argv: list[str] | None = None) -> T:
    """Parse an entry point's flags (one per config field, plus --log-level), set
    up logging, and return the config: environment first, then flags."""
    from services import logs

    parser = argparse.ArgumentParser(description=description)
    add_flags(parser, cls)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    return load(cls, section, args)
