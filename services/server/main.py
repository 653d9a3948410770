"""The inference server: wires the engine, store, Kafka and the core into grpc.aio,
and the same core into the OpenAI-compatible HTTP API (services/server/http/).

Entry point ``personalize-server``. Stops gracefully on SIGINT/SIGTERM: health
(and HTTP readiness) goes NOT_SERVING, new calls are refused, in-flight streams
of both APIs drain, the producer flushes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from personalize.v1 import assistant_pb2, assistant_pb2_grpc
from services.contract import config as config_mod
from services.contract.auth import Authenticator
from services.contract.store import AdapterStore
from services.server.config import ServerConfig
from services.server.core import AssistantCore
from services.server.engine import Engine, VllmEngine
from services.server.feedback import FeedbackService
from services.server.generation import GenerationService
from services.server.hot_swap import AdapterManager
from services.server.http.app import HttpApi, HttpContext
from services.server.http.runner import HttpServer
from services.server.interceptors import ErrorMappingInterceptor
from services.server.kafka_io import DurableProducer, TopicFollower
from services.server.lifecycle import LifecycleService
from services.server.metrics import ServerMetrics
from services.server.response_ids import ResponseSigner, load_keys
from services.server.servicer import AssistantServicer

log = logging.getLogger(__name__)
SERVICE_NAME = assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name
OPEN_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! AUTHENTICATION IS OFF: anyone who reaches %s:%d can act as ANY user\n"
    "!! (read their status, rate their answers, steer their adapter). Fine on a\n"
    "!! laptop; anywhere else set PERSONALIZE_SERVER_AUTH_SECRETS (see docs/api.md).\n"
    + "!" * 78)


class AssistantServer:
    """One server replica. ``engine`` may be injected (tests share one)."""

    def __init__(self, cfg: ServerConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.engine: Engine = engine or VllmEngine(cfg.engine)
        self.metrics = ServerMetrics(generations_topic=cfg.kafka.generations_topic,
                                     feedback_topic=cfg.kafka.feedback_topic)
        self.auth = Authenticator(cfg.auth)
        self.store = AdapterStore(cfg.adapter_store)
        self.producer = DurableProducer(cfg.kafka, self.metrics.observe_produce)
        signer = ResponseSigner(load_keys(cfg.response_keys, self.store.root))
        self.adapters = AdapterManager(self.engine, self.store, self.metrics,
                                       cfg.engine.max_lora_rank,
                                       frozenset(cfg.engine.lora_target_modules) or None)
        replica = f"{socket.gethostname()}:{cfg.port}"
        self.core = AssistantCore(
            GenerationService(cfg, self.engine, self.adapters, self.producer, signer,
                              self.metrics, replica),
            FeedbackService(cfg.kafka, self.producer, signer, self.metrics,
                            self.adapters.erased_at),
            self.adapters, self.store)
        self.adapters.on_erased(self.core.forget_user)
        self.lifecycle = LifecycleService(
            self.store, self.adapters,
            lambda r: self.producer.send(cfg.kafka.adapter_updates_topic, r.user_id, r.to_json()),
            self.engine.model_id,
            lambda r: self.producer.send(cfg.kafka.feedback_topic, r.user_id, r.to_json()))
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._follower: TopicFollower | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_http = None
        self.http_port = 0
        """Port of the HTTP API once started (0: disabled)."""
        self.http: HttpApi | None = None
        self._http_server: HttpServer | None = None
        self._accepting = False

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        # 1. follow adapter updates first, then scan: nothing published in between is missed
        self._follower = TopicFollower(
            self.cfg.kafka, self.cfg.kafka.adapter_updates_topic,
            lambda raw: asyncio.run_coroutine_threadsafe(self.adapters.on_update(raw), loop))
        self._follower.start()
        await asyncio.to_thread(self._follower.ready.wait, 5.0)
        installed = await self.adapters.scan()
        log.info("adapter store %s: %d users with adapters", self.store.root, installed)
        if self.cfg.store_rescan_s > 0:
            self._tasks.append(asyncio.create_task(self._rescan_forever()))
        # 2. gRPC with health and reflection
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(self.metrics)],
                                 maximum_concurrent_rpcs=self.cfg.max_concurrent_rpcs)
        assistant_pb2_grpc.add_AssistantServicer_to_server(
            AssistantServicer(self.core, self.cfg.limits, self.auth, self.lifecycle), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(f"{self.cfg.host}:{self.cfg.port}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._accepting = True
        # 3. the OpenAI-compatible HTTP API, on this loop, over the same core
        if self.cfg.http_port:
            await self._start_http()
        # 4. metrics on their own port
        if self.cfg.metrics_port:
            self._metrics_http = start_http_server(self.cfg.metrics_port, self.cfg.metrics_host,
                                                   registry=self.metrics.registry)
        log.info("serving %s on %s:%d (metrics :%d)", self.engine.model_id, self.cfg.host,
                 self.port, self.cfg.metrics_port)
        if not self.auth.enabled:
            log.warning(OPEN_WARNING, self.cfg.host, self.port)
        return self.port

    async def _start_http(self) -> None:
        self.http = HttpApi(HttpContext(
            core=self.core, limits=self.cfg.limits, auth=self.auth, metrics=self.metrics,
            model_id=self.engine.model_id, max_body_bytes=self.cfg.http_max_body_bytes,
            max_in_flight=self.cfg.max_concurrent_rpcs, ready=lambda: self._accepting,
            alive=lambda: not self.engine.dead, cors_origins=self.cfg.http_cors_origins,
            lifecycle=self.lifecycle))
        self._http_server = HttpServer(self.http.app, self.cfg.host, self.cfg.http_port,
                                       self.cfg.drain_timeout_s)
        self.http_port = await self._http_server.start()
        log.info("OpenAI-compatible HTTP API on http://%s:%d/v1", self.cfg.host, self.http_port)

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.store_rescan_s)
            try:
                await self.adapters.scan()
            except Exception:
                log.exception("adapter store rescan failed")

    async def engine_failed(self, poll_s: float = 1.0) -> None:
        """Returns once the engine has failed for good, after turning health to
        NOT_SERVING, so that the process can exit and be restarted."""
        while not self.engine.dead:
            await asyncio.sleep(poll_s)
        log.error("the inference engine failed; reporting NOT_SERVING and exiting")
        self._accepting = False
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight streams, flush the producer."""
        self._accepting = False
        await self.health.enter_graceful_shutdown()
        draining = []
        if self._server is not None:
            draining.append(self._server.stop(grace=self.cfg.drain_timeout_s))
        if self._http_server is not None:
            draining.append(self._http_server.stop())
        await asyncio.gather(*draining)
        for task in self._tasks:
            task.cancel()
        if self._follower is not None:
            self._follower.stop()
        await asyncio.to_thread(self.producer.close)
        if self._metrics_http is not None:
            http_server, _thread = self._metrics_http
            http_server.shutdown()
        log.info("server stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(cfg: ServerConfig) -> int:
    """Runs until SIGINT/SIGTERM (exit code 0) or an engine failure (1)."""
    server = AssistantServer(cfg)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    http = f"HTTP on http://{cfg.host}:{server.http_port}/v1, " if server.http_port else ""
    print(f"personalize server listening on {cfg.host}:{server.port}, {http}"
          f"metrics on http://{cfg.metrics_host}:{cfg.metrics_port}/metrics, "
          f"auth {'on' if server.auth.enabled else 'OFF (open to anyone)'}", flush=True)
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(server.engine_failed())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, failed):
        task.cancel()
    await server.stop()
    shutdown = getattr(server.engine, "shutdown", None)
    if shutdown is not None:
        shutdown()
    return 1 if server.engine.dead else 0


def main(argv: list[str] | None = None) -> None:
    cfg = config_mod.parse_entry_point(ServerConfig, "server", "personalize inference server",
                                       argv)
    Path(cfg.adapter_store).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(serve(cfg)))


if __name__ == "__main__":
    main()
