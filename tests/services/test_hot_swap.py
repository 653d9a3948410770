"""Hot-swap of per-user adapters on the real engine, driven by the real topic."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from services.contract.store import AdapterStore
from tests.services.helpers import PROMPT, generate, greedy, wait_for_version
from tests.support.adapters import corrupt_manifest_sha, make_adapter, publish


@pytest.fixture(scope="module")
def store(server) -> AdapterStore:  # type: ignore[no-untyped-def]
    return server.store


class Load:
    """Greedy requests for one user in a loop, in background threads, recording
    every outcome, so swaps happen while requests are in flight."""

    def __init__(self, stub, user: str, threads: int = 2) -> None:  # type: ignore[no-untyped-def]
        self.stub, self.user = stub, user
        self.results: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = greedy(self.stub, self.user)
                self.results.append((out.finished[0].adapter_version, out.texts[0]))
            except grpc.RpcError as exc:
                self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_swap_under_load(stub, server, store, broker, tiny_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user, bystander = f"swap-{uuid.uuid4().hex[:6]}", f"by-{uuid.uuid4().hex[:6]}"
    base_text = greedy(stub, user).texts[0]
    bystander_text = greedy(stub, bystander).texts[0]
    a1 = make_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    a2 = make_adapter(tiny_model_dir, tmp_path / "a2", seed=2)
    model_id = server.engine.model_id

    with Load(stub, user) as load:
        time.sleep(0.5)
        m1 = publish(store, broker.bootstrap, "adapter-updates", user, a1, model_id)
        v1 = wait_for_version(stub, user, m1.version)
        time.sleep(0.5)
        m2 = publish(store, broker.bootstrap, "adapter-updates", user, a2, model_id)
        v2 = wait_for_version(stub, user, m2.version)
        time.sleep(0.5)

    assert (m1.version, m2.version) == ("v1", "v2")
    assert not load.errors, f"requests failed during the swaps: {load.errors[:3]}"
    assert v1.texts[0] != base_text, "the adapter must change the greedy output"
    assert v2.texts[0] not in (base_text, v1.texts[0])
    expected = {"": base_text, "v1": v1.texts[0], "v2": v2.texts[0]}
    versions = [v for v, _ in load.results]
    assert {"", "v2"} <= set(versions), versions
    for version, text in load.results:
        assert text == expected[version], (
            f"a request on {version or 'base'} got other weights: {text!r}, expected {expected!r}")
    # base_model=True answers without the adapter, for comparisons
    base = generate(stub, user, PROMPT, max_tokens=24, temperature=0.0, base_model=True)
    assert base.finished[0].adapter_version == "" and base.texts[0] == base_text
    # the bystander never moved off the base model
    other = greedy(stub, bystander)
    assert other.finished[0].adapter_version == "" and other.texts[0] == bystander_text
    # old versions are dropped once unused
    assert not server.adapters._registry.retiring


def test_bad_adapter_is_refused_and_last_good_kept(stub, server, store, broker,  # type: ignore[no-untyped-def]
                                                   tiny_model_dir: Path, tmp_path: Path) -> None:
    user = f"bad-{uuid.uuid4().hex[:6]}"
    model_id = server.engine.model_id
    good = publish(store, broker.bootstrap, "adapter-updates", user,
                   make_adapter(tiny_model_dir, tmp_path / "good", seed=3), model_id)
    good_text = wait_for_version(stub, user, good.version).texts[0]
    before = server.metrics.adapter_refusals.labels("checksum")._value.get()
    bad = store.publish(user, make_adapter(tiny_model_dir, tmp_path / "bad", seed=4), model_id,
                        store.latest(user) or "")
    corrupt_manifest_sha(store.version_dir(user, bad.version))
    from tests.support.adapters import announce

    announce(broker.bootstrap, "adapter-updates", bad)
    deadline = time.monotonic() + 10
    while server.metrics.adapter_refusals.labels("checksum")._value.get() == before:
        assert time.monotonic() < deadline, "the corrupted adapter was not refused"
        time.sleep(0.1)
    out = greedy(stub, user)
    assert out.finished[0].adapter_version == good.version and out.texts[0] == good_text


def test_more_users_than_cached_adapters(stub, server, store, broker, engine_config,  # type: ignore[no-untyped-def]
                                         loop_thread, tiny_model_dir: Path, tmp_path: Path) -> None:
    n = engine_config.max_cpu_loras + 2
    users = [f"lru{i}-{uuid.uuid4().hex[:5]}" for i in range(n)]
    for i, user in enumerate(users):
        adapter = make_adapter(tiny_model_dir, tmp_path / user, seed=100 + i)
        publish(store, broker.bootstrap, "adapter-updates", user, adapter, server.engine.model_id)
    first = {u: wait_for_version(stub, u, "v1").texts[0] for u in users}
    assert len(set(first.values())) == n, "each user's adapter gives its own output"
    cache = server.metrics.lora_cache
    before = {r: cache.labels(r)._value.get() for r in ("hit", "miss")}
    for user in reversed(users):  # evicted adapters are reloaded with the right weights
        out = greedy(stub, user)
        assert out.finished[0].adapter_version == "v1" and out.texts[0] == first[user]
        # the server's model of vLLM's LRU adapter cache is what vLLM holds
        engine = server.engine
        assert engine._lora_cache.resident == set(loop_thread.run(engine._llm.list_loras()))
    # the last max_cpu_loras users served stayed loaded; the two before them were evicted
    after = {r: cache.labels(r)._value.get() for r in ("hit", "miss")}
    assert (after["hit"] - before["hit"], after["miss"] - before["miss"]) == (n - 2, 2)
