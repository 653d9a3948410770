"""A real Prometheus (Debian's `prometheus`) scrapes a real server and trainer
while traffic goes round the loop; then every query of the Grafana dashboard
returns data with the labels it groups by, every alert rule evaluates, the new
metrics hold the values the traffic implies, and promtool finds both live
/metrics pages clean.

The server and the trainer here have their own topics and adapter store (the
server shares the session's engine and broker), so the trainer sees only this
test's traffic and its one turn is quick whatever ran before.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from tests.conftest import make_server_config
from tests.deploy.helpers import (
    PROM,
    dashboard,
    dashboard_targets,
    grouping_labels,
    prometheus_tool,
)
from tests.services.helpers import chat_request, generate
from tests.support.adapters import announce, corrupt_manifest_sha, make_adapter
from tests.support.trainer_proc import ALWAYS_PUBLISH, start_trainer

pytestmark = pytest.mark.e2e
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
PROMPTS = ["tell me about the sea", "name a fruit", "how are you", "say something short"]
# what the traffic below implies, beyond "has a series"
EXPECTED: list[tuple[str, Callable[[float], bool]]] = [
    ('personalize_server_lora_cache_requests_total{result="hit"}', lambda v: v >= 1),
    ('personalize_server_adapter_loads_total{result="ok"}', lambda v: v >= 1),
    ('personalize_server_adapter_refusals_total{reason="checksum"}', lambda v: v == 1),
    ('sum(personalize_server_feedback_total{result="rejected"})', lambda v: v == 1),
    ("sum(personalize_server_engine_requests)", lambda v: v == 0),  # nothing left in flight
    ('sum(personalize_server_requests_total{api="http",method="Generate",code="OK"})',
     lambda v: v == 1),
    ("personalize_trainer_feedback_joined_total", lambda v: v == len(PROMPTS)),
    ("personalize_trainer_users_tracked", lambda v: v == 1),
    ("personalize_trainer_adapters_published_total", lambda v: v >= 1),
]


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    body = json.loads(http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) with Grafana's variables replaced."""
    out = []
    for title, expr in dashboard_targets(dashboard()):
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"panel {title!r}: add its variable to GRAFANA_VARIABLES"
        out.append((title, expr))
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def live_server(home: Path, loop_thread, tiny_engine, broker, engine_config):  # type: ignore[no-untyped-def]
    from services.devstack.broker import free_port
    from services.server.kafka_io import ensure_topics
    from services.server.main import AssistantServer

    tag = uuid.uuid4().hex[:8]
    cfg = make_server_config(home / "store", broker.bootstrap, engine_config,
                             metrics_port=free_port(), http_port=free_port())
    kafka = dataclasses.replace(cfg.kafka, generations_topic=f"generations-{tag}",
                                feedback_topic=f"feedback-{tag}",
                                adapter_updates_topic=f"adapter-updates-{tag}")
    ensure_topics(kafka)
    srv = loop_thread.call(AssistantServer, dataclasses.replace(cfg, kafka=kafka), tiny_engine)
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop())


@pytest.fixture(scope="module")
def live_trainer(live_server, broker, tiny_model_dir: Path, home: Path) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """A trainer on the server's topics and store; yields its metrics port."""
    from services.devstack.broker import free_port, wait_for_port

    port, k, start = free_port(), live_server.cfg.kafka, time.monotonic()
    log = home / "trainer.log"
    proc = start_trainer(
        broker.bootstrap, home / "state", live_server.store.root,
        f"live-{uuid.uuid4().hex[:6]}", log, metrics_port=str(port),
        policy_model=str(tiny_model_dir), policy_model_id=live_server.engine.model_id,
        kafka_generations_topic=k.generations_topic, kafka_feedback_topic=k.feedback_topic,
        kafka_adapter_updates_topic=k.adapter_updates_topic, torch_threads="1",
        **ALWAYS_PUBLISH)
    wait_for_port("127.0.0.1", port, 60)
    print(f"trainer metrics up in {time.monotonic() - start:.1f}s")
    yield port
    assert proc.poll() is None, log.read_text()[-4000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def prometheus(live_server, live_trainer: int, home: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """deploy/prometheus/prometheus.yml (its jobs and alert rules) scraping the two
    live processes every second; yields the HTTP API's base URL."""
    from services.devstack.broker import free_port

    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                     "evaluation_interval": "1s"}
    targets = {"personalize-server": live_server.cfg.metrics_port,
               "personalize-trainer": live_trainer}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    (home / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    for rules in cfg["rule_files"]:
        shutil.copy(PROM / rules, home / rules)
    port, log = free_port(), home / "prometheus.log"
    proc = subprocess.Popen(
        [prometheus_tool("prometheus"), f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                http_get(f"{base}/-/ready")
                break
            except OSError:
                assert time.monotonic() < deadline, "Prometheus not ready in 30s"
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def drive_traffic(stub, live_server, broker, tiny_model_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                  user: str) -> None:
    """Rankings and thumbs enough for a turn, a refused call, a rejected feedback,
    and a corrupted adapter version for another user."""
    other = f"other-{uuid.uuid4().hex[:6]}"
    for i, prompt in enumerate(PROMPTS):
        out = generate(stub, user, prompt, num_candidates=3, max_tokens=8, temperature=1.0)
        feedback = (pb.FeedbackRequest(user_id=user, ranking=pb.Ranking(
                        response_ids=[out.response_ids[j] for j in (2, 0, 1)]))
                    if i % 2 == 0 else
                    pb.FeedbackRequest(user_id=user, thumbs=pb.Thumbs(
                        response_id=out.response_ids[1], up=i == 1)))
        stub.SubmitFeedback(feedback, timeout=30)
    theirs = generate(stub, other, max_tokens=4).response_ids[0]
    with pytest.raises(grpc.RpcError):  # a user may only rate what they were served
        stub.SubmitFeedback(pb.FeedbackRequest(user_id=user, thumbs=pb.Thumbs(
            response_id=theirs, up=True)), timeout=30)
    with pytest.raises(grpc.RpcError):
        list(stub.Generate(chat_request(user, max_tokens=999999), timeout=10))
    answer = httpx.post(f"http://127.0.0.1:{live_server.http_port}/v1/chat/completions",
                        json={"model": live_server.engine.model_id, "user": other, "max_tokens": 4,
                              "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert answer.status_code == 200, answer.text  # the same metrics with api="http"
    store = live_server.store
    bad = store.publish(other, make_adapter(tiny_model_dir, tmp_path / "bad", seed=5),
                        live_server.engine.model_id, store.latest(other) or "")
    corrupt_manifest_sha(store.version_dir(other, bad.version))
    announce(broker.bootstrap, live_server.cfg.kafka.adapter_updates_topic, bad)


def test_every_dashboard_query_has_data(live_server, prometheus: str, broker,  # type: ignore[no-untyped-def]
                                        tiny_model_dir: Path, tmp_path: Path, home: Path) -> None:
    start = time.monotonic()
    user = f"live-{uuid.uuid4().hex[:6]}"
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        stub = assistant_pb2_grpc.AssistantStub(channel)
        drive_traffic(stub, live_server, broker, tiny_model_dir, tmp_path, user)
        # the trainer's turn publishes v1; the server swaps it in and serves it
        deadline = time.monotonic() + 120
        while stub.GetUserStatus(pb.UserStatusRequest(user_id=user)).adapter_version != "v1":
            assert time.monotonic() < deadline, (home / "trainer.log").read_text()[-4000:]
            time.sleep(0.5)
        assert generate(stub, user, PROMPTS[0], max_tokens=6).finished[0].adapter_version == "v1"

    # Prometheus: poll until every query has data (rates need two scrapes after the events)
    queries = dashboard_queries()
    deadline = time.monotonic() + 60
    while True:
        results = {expr: query(prometheus, expr) for _, expr in queries}
        values = {expr: query(prometheus, expr) for expr, _ in EXPECTED}
        done = all(results.values()) and all(
            len(values[e]) == 1 and ok(float(values[e][0]["value"][1])) for e, ok in EXPECTED)
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    for title, expr in queries:
        assert results[expr], f"panel {title!r}: no data for {expr}"
        wanted = set(grouping_labels(expr)) - {"le"}
        for series in results[expr]:
            assert wanted <= set(series["metric"]), f"panel {title!r}: {series} lacks {wanted}"
    for expr, _ in EXPECTED:
        assert len(values[expr]) == 1, f"{expr}: {values[expr]}"
    got = {expr: float(values[expr][0]["value"][1]) for expr, _ in EXPECTED}
    assert all(ok(got[expr]) for expr, ok in EXPECTED), got
    # the alert rules evaluate on live data without error
    rules = json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
    evaluated = [r for g in rules for r in g["rules"]]
    assert evaluated and all(r["health"] == "ok" for r in evaluated), evaluated
    print(f"{len(queries)} dashboard queries answered in {time.monotonic() - start:.1f}s")


def test_live_metrics_pass_promtool(live_server, live_trainer: int) -> None:  # type: ignore[no-untyped-def]
    """promtool's lint of both exposition pages (after the traffic above, when run
    with it: every metric then has samples)."""
    for port in (live_server.cfg.metrics_port, live_trainer):
        page = http_get(f"http://127.0.0.1:{port}/metrics")
        assert b"personalize_" in page
        check = subprocess.run([prometheus_tool(), "check", "metrics"], input=page,
                               capture_output=True, timeout=30)
        assert check.returncode == 0 and not check.stdout + check.stderr, \
            (check.stdout + check.stderr).decode()
