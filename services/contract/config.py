"""The configuration loader shared by every entry point, and the Kafka settings both
sides use: typed, frozen dataclasses parsed once at the entry point.

Every field can be set from the environment (``PERSONALIZE_<SECTION>_<FIELD>``,
e.g. ``PERSONALIZE_SERVER_KAFKA_BOOTSTRAP_SERVERS``) or from command-line flags that
the entry points add with :func:`add_flags`. A ``PERSONALIZE_*`` variable that no
section knows stops start-up with a message naming it (a typo is never ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

ENV_PREFIX = "PERSONALIZE_"
SECTIONS = ("SERVER", "TRAINER")
"""Sections of ``PERSONALIZE_<SECTION>_<FIELD>``: one per entry point's config."""
OTHER_VARIABLES = frozenset({
    "PERSONALIZE_TOKEN",  # the CLI's default bearer token
    "PERSONALIZE_FUZZ_EXAMPLES",  # examples per RPC of the test suite's fuzzing
    "PERSONALIZE_LORA_CPU_OPS",  # EngineConfig.lora_cpu_ops, exported to vLLM's processes
})
"""Variables outside the sections that are read by name."""
CREDENTIALS = frozenset({
    "PERSONALIZE_TOKEN",
    "PERSONALIZE_SERVER_AUTH_SECRETS",
    "PERSONALIZE_SERVER_RESPONSE_KEYS",
})
"""Variables that hold secrets: never written into a report or a log."""


class ConfigError(ValueError):
    """A setting that is unknown or does not parse; the message names it."""


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
                raise ConfigError(f"{key}: {exc}") from exc
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


def setting_names(cls: type, prefix: str) -> set[str]:
    """Every environment name :func:`from_mapping` reads for ``cls`` under ``prefix``."""
    names: set[str] = set()
    for f in fields(cls):
        kind, _ = _field_type(cls, f.name)
        key = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(kind):
            names |= setting_names(kind, key + "_")  # type: ignore[arg-type]
        else:
            names.add(key)
    return names


def recordable_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The ``PERSONALIZE_*`` variables of ``env`` but the :data:`CREDENTIALS`, by name:
    what a run may record of its settings."""
    return {name: value for name, value in sorted(env.items())
            if name.startswith(ENV_PREFIX) and name not in CREDENTIALS}


def check_environment(cls: type, section: str, env: Mapping[str, str]) -> None:
    """ConfigError naming every ``PERSONALIZE_*`` variable that is not a setting of
    ``cls`` under its section, nor another section's, nor a known variable."""
    prefix = f"{ENV_PREFIX}{section.upper()}_"
    known = setting_names(cls, prefix)
    others = tuple(f"{ENV_PREFIX}{s}_" for s in SECTIONS
                   if not prefix.startswith(f"{ENV_PREFIX}{s}_"))
    unknown = sorted(
        name for name in env
        if name.startswith(ENV_PREFIX) and name not in known and name not in OTHER_VARIABLES
        and (name.startswith(prefix) or not name.startswith(others)))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known | OTHER_VARIABLES), n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''}: "
                          f"{', '.join(hints)}; see docs/configuration.md")


def load(cls: type[T], section: str, args: argparse.Namespace | None = None,
         env: Mapping[str, str] | None = None) -> T:
    """Environment first, then flags that were given on the command line. Unknown
    ``PERSONALIZE_*`` variables and values that do not parse raise ConfigError."""
    values = dict(os.environ if env is None else env)
    check_environment(cls, section, values)
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
    from services.contract import logs

    parser = argparse.ArgumentParser(description=description)
    add_flags(parser, cls)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)  # an unknown flag exits here, naming it
    logs.setup(args.log_level)
    try:
        return load(cls, section, args)
    except ConfigError as exc:
        parser.error(str(exc))  # exits 2 with the message
