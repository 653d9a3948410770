"""A server whose engine fails for good reports NOT_SERVING and its entry point exits
non-zero, so a supervisor (the stack, Kubernetes) restarts it instead of leaving a
process that answers every call with INTERNAL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc_health.v1 import health_pb2

from services.server.main import AssistantServer
from tests.conftest import make_server_config


class FailingEngine:
    """Stands in for a vLLM engine whose worker died: only ``dead`` is used."""

    model_id = "tiny"
    max_model_len = 128

    def __init__(self) -> None:
        self.dead = False


def test_engine_failure_turns_health_to_not_serving(broker, engine_config,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    cfg = make_server_config(tmp_path, broker.bootstrap, engine_config)
    engine = FailingEngine()
    server = AssistantServer(cfg, engine=engine)  # type: ignore[arg-type]

    async def scenario() -> tuple[bool, int]:
        for name in ("", "personalize.v1.Assistant"):
            await server.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        watch = asyncio.create_task(server.engine_failed(poll_s=0.01))
        await asyncio.sleep(0.1)
        still_waiting = not watch.done()
        engine.dead = True
        await asyncio.wait_for(watch, 2)
        reply = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return still_waiting, reply.status

    still_waiting, status = asyncio.run(scenario())
    assert still_waiting, "a healthy engine must not end the watch"
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.producer.close()


def test_the_real_engine_is_alive(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    assert tiny_engine.dead is False
