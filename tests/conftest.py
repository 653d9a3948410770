"""Session-wide real parts: one Kafka-protocol broker, one tiny-model vLLM engine,
one in-process server. Tests share them; each uses its own user ids."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.loop_thread import LoopThread
from tests.support.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# 1 GiB of KV cache per engine (vLLM's CPU default is 4 GiB): the tiny test models need
# little, and a session may run two engines at once (the shared one and a stack's).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return build_tiny_model(REPO / ".cache" / "test-models" / "tiny-llama")


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    from services.contract.config import KafkaConfig
    from services.devstack.broker import LocalBroker
    from services.server.kafka_io import ensure_topics

    b = LocalBroker().start()
    ensure_topics(KafkaConfig(bootstrap_servers=b.bootstrap))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def own_broker() -> Iterator[object]:
    """A broker of the module alone: pausing it (SIGSTOP) disturbs no other test."""
    import os
    import signal

    from services.devstack.broker import LocalBroker

    b = LocalBroker().start()
    yield b
    os.kill(b.pid, signal.SIGCONT)
    b.stop()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="session")
def engine_config(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from services.server.config import EngineConfig

    return EngineConfig(model=str(tiny_model_dir), model_id="tiny-llama", dtype="float32",
                        max_model_len=512, max_lora_rank=8, max_loras=2, max_cpu_loras=4,
                        max_num_seqs=32)


@pytest.fixture(scope="session")
def tiny_engine(loop_thread: LoopThread, engine_config):  # type: ignore[no-untyped-def]
    from services.server.engine import VllmEngine

    engine = loop_thread.call(VllmEngine, engine_config)
    yield engine
    engine.shutdown()


def make_server_config(tmp: Path, bootstrap: str, engine_config, **overrides):  # type: ignore[no-untyped-def]
    from services.contract.config import KafkaConfig
    from services.server.config import GenerationLimits, ServerConfig

    kafka = KafkaConfig(bootstrap_servers=bootstrap, produce_timeout_s=3.0, max_block_s=1.0)
    return dataclasses.replace(
        ServerConfig(port=0, metrics_port=0, http_port=0, adapter_store=str(tmp),
                     engine=engine_config,
                     kafka=kafka, limits=GenerationLimits(default_max_tokens=16),
                     store_rescan_s=0, drain_timeout_s=5.0),
        **overrides)


@pytest.fixture(scope="session")
def adapter_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapter-store")


@pytest.fixture(scope="session")
def server(loop_thread, tiny_engine, broker, engine_config, adapter_store_dir):  # type: ignore[no-untyped-def]
    from services.devstack.broker import free_port
    from services.server.main import AssistantServer

    cfg = make_server_config(adapter_store_dir, broker.bootstrap, engine_config,
                             metrics_port=free_port(), http_port=free_port())
    srv = loop_thread.call(AssistantServer, cfg, tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


@pytest.fixture(scope="session")
def channel(server) -> Iterator[grpc.Channel]:  # type: ignore[no-untyped-def]
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from personalize.v1 import assistant_pb2_grpc

    return assistant_pb2_grpc.AssistantStub(channel)


@pytest.fixture(scope="session")
def http_url(server) -> str:  # type: ignore[no-untyped-def]
    """Base URL of the session server's OpenAI-compatible HTTP API (same engine)."""
    return f"http://127.0.0.1:{server.http_port}"


@pytest.fixture()
def user_id() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"
