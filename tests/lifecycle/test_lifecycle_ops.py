"""Lifecycle operations through gRPC (issue 13, item 4), in-process on the tiny engine:
two replicas with auth sharing one adapter store and one adapter-updates topic. An
operation on one replica reaches the other; each is idempotent; a replica started
later serves what the store's control state says; the status codes are precise; and
the trainer's publisher leaves a pinned or reset user alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from personalize.v1 import assistant_pb2_grpc
from services.client.sdk import AssistantClient
from services.contract.store import AdapterStore, StaleParent, UserControl
from tests.hardening.conftest import AUTH, Servers, Tokens
from tests.services.helpers import greedy, wait_for_version
from tests.support.adapters import make_adapter, publish
from tests.support.topics import isolated_kafka


@pytest.fixture(scope="module")
def replicas(loop_thread, tiny_engine, engine_config, broker,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory):
    servers = Servers(loop_thread, tiny_engine, engine_config, tmp_path_factory.mktemp("lc"))
    kafka = isolated_kafka(broker.bootstrap, f"lifecycle-{uuid.uuid4().hex[:6]}")
    store = tmp_path_factory.mktemp("lc-store")
    a, b = (servers.start(kafka, store, auth=AUTH) for _ in range(2))
    yield servers, kafka, store, a, b
    servers.stop_all()


def stub_of(srv) -> assistant_pb2_grpc.AssistantStub:  # type: ignore[no-untyped-def]
    return assistant_pb2_grpc.AssistantStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))


class Authed:
    """A stub whose calls carry one token's metadata."""

    def __init__(self, stub: assistant_pb2_grpc.AssistantStub, md: tuple) -> None:  # type: ignore[type-arg]
        self._stub, self._md = stub, md

    def __getattr__(self, name: str) -> Callable[..., object]:
        call = getattr(self._stub, name)
        return lambda req, **kw: call(req, **{"timeout": 30, **kw, "metadata": self._md})


def until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def test_rollback_pin_reset_unpin_across_replicas(replicas, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    servers, kafka, store_dir, a, b = replicas
    tokens, user = Tokens(), f"lc-{uuid.uuid4().hex[:6]}"
    admin = tokens("ops", admin=True)
    ops_a, ops_b = Authed(stub_of(a), admin), Authed(stub_of(b), admin)
    store = AdapterStore(store_dir)
    texts = {}
    for seed in (1, 2):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed)
        version = publish(store, kafka.bootstrap_servers, kafka.adapter_updates_topic, user,
                          adapter, a.engine.model_id).version
        for srv in (a, b):
            texts[version] = wait_for_version(Authed(stub_of(srv), admin), user,
                                              version).texts[0]
    req = pb.LifecycleRequest

    # precise codes: unknown version, bad version, a user's own token, a pinned user
    assert code(lambda: ops_a.Rollback(req(user_id=user, version="v9"))) \
        == grpc.StatusCode.NOT_FOUND
    assert code(lambda: ops_a.Pin(req(user_id=user, version="../v1"))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    own = Authed(stub_of(a), tokens(user))
    for name in ("ListVersions", "Rollback", "Pin", "Unpin", "Reset"):
        assert code(lambda n=name: getattr(own, n)(req(user_id=user, version="v1"))) \
            == grpc.StatusCode.PERMISSION_DENIED, name
    assert code(lambda: stub_of(a).Reset(req(user_id=user), timeout=10)) \
        == grpc.StatusCode.UNAUTHENTICATED

    # rollback on replica A: v1's weights served again as v3, on both replicas
    out = ops_a.Rollback(req(user_id=user, version="v1"))
    assert (out.served_version, out.changed) == ("v3", True), out
    for srv in (a, b):
        served = wait_for_version(Authed(stub_of(srv), admin), user, "v3")
        assert served.texts[0] == texts["v1"]
    again = ops_b.Rollback(req(user_id=user, version="v1"))  # idempotent, on the other one
    assert (again.served_version, again.changed) == ("v3", False)
    listed = ops_b.ListVersions(req(user_id=user))
    assert [v.version for v in listed.versions] == ["v1", "v2", "v3"]
    v2, v3 = listed.versions[1], listed.versions[2]
    assert v2.rolled_back and not v3.rolled_back and v3.restores == "v1"
    assert v3.parent_version == "v2" and v3.rollback_reason == "rolled back by an operator"
    assert listed.served_version == "v3" and not listed.pinned_version

    # pin v3; the trainer's publisher is held; a rollback of a pinned user is refused
    pinned = ops_a.Pin(req(user_id=user, version="v3"))
    assert (pinned.pinned_version, pinned.changed) == ("v3", True)
    assert not ops_b.Pin(req(user_id=user, version="v3")).changed
    assert code(lambda: ops_b.Rollback(req(user_id=user, version="v2"))) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert store.read_control(user) == UserControl(pinned="v3",
                                                   updated_at=store.read_control(user).updated_at)
    from trainer.loop.publish import Publisher

    with pytest.raises(StaleParent, match="pinned"):
        Publisher(store, lambda r: None, a.engine.model_id).publish(
            user, tmp_path / "a2", parent_version="v3", steps=1, feedback_count=1,
            reward_before=0, reward_after=0, kl=0, metrics={})
    assert ops_a.ListVersions(req(user_id=user)).versions[2].pinned

    # reset on replica B: both replicas serve the base model; a new replica too
    reset = ops_b.Reset(req(user_id=user))
    assert (reset.served_version, reset.reset, reset.changed) == ("", True, True)
    assert not ops_a.Reset(req(user_id=user)).changed
    for srv in (a, b):
        until(lambda s=srv: greedy(Authed(stub_of(s), admin), user).finished[0].adapter_version
              == "", "reset reaches every replica")
    late = servers.start(kafka, store_dir, auth=AUTH)  # durable: read from the store
    assert greedy(Authed(stub_of(late), admin), user).finished[0].adapter_version == ""
    status = Authed(stub_of(a), admin).GetUserStatus(pb.UserStatusRequest(user_id=user))
    assert status.adapter_version == ""

    # unpin: the newest version is served again everywhere
    assert ops_a.Unpin(req(user_id=user)).served_version == "v3"
    assert not ops_a.Unpin(req(user_id=user)).changed
    for srv in (a, b, late):
        wait_for_version(Authed(stub_of(srv), admin), user, "v3")
    servers.stop(late)

    # pin an earlier version: it is restored as a new version, then pinned
    out = ops_a.Pin(req(user_id=user, version="v2"))
    assert (out.served_version, out.pinned_version) == ("v4", "v4")
    assert wait_for_version(Authed(stub_of(b), admin), user, "v4").texts[0] == texts["v2"]
    assert not ops_a.Pin(req(user_id=user, version="v2")).changed
    ops_a.Unpin(req(user_id=user))


def test_sdk_and_cli_lifecycle_calls(replicas, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from services.client.cli import main

    _, _, _, a, _ = replicas
    user, token = f"sdk-{uuid.uuid4().hex[:6]}", Tokens().token("ops", admin=True)
    with AssistantClient(f"127.0.0.1:{a.port}", token=token) as c:
        assert list(c.list_versions(user).versions) == []
        assert c.reset(user).reset is True
        assert c.unpin(user).changed is True
        with pytest.raises(grpc.RpcError, match="no version"):
            c.pin(user, "v1")
    flags = ["--user", user, "--server", f"127.0.0.1:{a.port}", "--token", token]
    assert main(["admin", "reset", *flags]) == 0
    assert "reset: true" in capsys.readouterr().out
    assert main(["admin", "versions", *flags]) == 0
    assert f'user_id: "{user}"' in capsys.readouterr().out
    assert main(["admin", "rollback", *flags, "--version", "v1"]) == 1
    assert "error: NOT_FOUND" in capsys.readouterr().err
    assert main(["admin", "unpin", *flags]) == 0


def test_erase_across_replicas(replicas, tiny_model_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                               capsys: pytest.CaptureFixture[str]) -> None:
    """A user erases themself on replica A: both replicas serve the base model, forget
    the user's counters and refuse feedback on answers served before; the store keeps
    only the tombstone, which is also on the feedback topic; a later publish trained on
    older data is refused, a new one is served; a replica started later knows it all."""
    from services.client.cli import main
    from services.contract.store import Erased
    from tests.support.topics import read_topic
    from trainer.loop.publish import Publisher

    servers, kafka, store_dir, a, b = replicas
    tokens, user = Tokens(), f"er-{uuid.uuid4().hex[:6]}"
    store, req = AdapterStore(store_dir), pb.LifecycleRequest
    own_a, own_b = Authed(stub_of(a), tokens(user)), Authed(stub_of(b), tokens(user))
    adapter = make_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    for _ in range(2):
        publish(store, kafka.bootstrap_servers, kafka.adapter_updates_topic, user, adapter,
                a.engine.model_id)
    before = {srv: wait_for_version(own, user, "v2") for srv, own in ((a, own_a), (b, own_b))}
    own_a.SubmitFeedback(pb.FeedbackRequest(user_id=user, thumbs=pb.Thumbs(
        response_id=before[a].response_ids[0], up=True)))
    assert own_a.GetUserStatus(pb.UserStatusRequest(user_id=user)).feedback_accepted == 1

    # another user's token may not; no token is unauthenticated
    assert code(lambda: Authed(stub_of(a), tokens("someone-else")).Erase(req(user_id=user))) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert code(lambda: stub_of(a).Erase(req(user_id=user), timeout=10)) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert code(lambda: own_a.Erase(req(user_id="bad/../id"))) in (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)

    out = own_a.Erase(req(user_id=user))
    assert list(out.deleted_versions) == ["v1", "v2"] and out.changed and not out.lifted_hold
    assert "tombstone at feedback partition" in out.detail
    assert sorted(p.name for p in store.user_dir(user).iterdir()) == ["control.json"]
    tombstones = [r for r in read_topic(
        kafka.bootstrap_servers, kafka.feedback_topic,
        lambda rs: any(r["value"]["type"] == "erasure" and r["value"]["user_id"] == user
                       for r in rs)) if r["value"]["type"] == "erasure"
        and r["value"]["user_id"] == user]
    assert [(t["partition"], t["offset"], t["value"]["requested_by"]) for t in tombstones] \
        == [(out.tombstone_partition, out.tombstone_offset, "self")]

    # every replica: the base model, no counters, feedback on old answers refused
    for srv, own in ((a, own_a), (b, own_b)):
        until(lambda o=own: greedy(o, user).finished[0].adapter_version == "",
              "the erasure reaches every replica")
        status = own.GetUserStatus(pb.UserStatusRequest(user_id=user))
        assert (status.adapter_version, status.feedback_accepted) == ("", 0)
        assert code(lambda o=own, s=srv: o.SubmitFeedback(pb.FeedbackRequest(
            user_id=user, thumbs=pb.Thumbs(response_id=before[s].response_ids[0], up=True)))) \
            == grpc.StatusCode.FAILED_PRECONDITION
    fresh = greedy(own_b, user)  # answers served since may be rated
    own_b.SubmitFeedback(pb.FeedbackRequest(user_id=user, thumbs=pb.Thumbs(
        response_id=fresh.response_ids[0], up=False)))

    # idempotent (here by an operator); a candidate trained before it is refused
    admin = Authed(stub_of(b), tokens("ops", admin=True))
    again = admin.Erase(req(user_id=user))
    assert (list(again.deleted_versions), again.changed) == ([], False)
    erased_at = store.erased_at(user)
    assert erased_at == pytest.approx(again.erased_at)
    publisher = Publisher(store, lambda r: None, a.engine.model_id)
    with pytest.raises(Erased):
        publisher.publish(user, adapter, parent_version="", steps=1, feedback_count=1,
                          reward_before=0, reward_after=0, kl=0, metrics={},
                          known_erasure=out.erased_at)
    # trained since: numbering goes on past the erased versions, every replica serves it
    version = publish(store, kafka.bootstrap_servers, kafka.adapter_updates_topic, user,
                      adapter, a.engine.model_id).version
    assert version == "v3"
    for own in (own_a, own_b):
        wait_for_version(own, user, "v3")
    late = servers.start(kafka, store_dir, auth=AUTH)
    own_late = Authed(stub_of(late), tokens(user))
    wait_for_version(own_late, user, "v3")
    assert code(lambda: own_late.SubmitFeedback(pb.FeedbackRequest(user_id=user, thumbs=pb.Thumbs(
        response_id=before[a].response_ids[0], up=True)))) == grpc.StatusCode.FAILED_PRECONDITION
    servers.stop(late)

    # the SDK and the CLI (which asks for --yes)
    with AssistantClient(f"127.0.0.1:{a.port}", token=Tokens().token(user)) as client:
        assert list(client.erase(user).deleted_versions) == ["v3"]
    flags = ["--user", user, "--server", f"127.0.0.1:{a.port}", "--token",
             Tokens().token(user)]
    assert main(["erase", *flags]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["erase", *flags, "--yes"]) == 0
    assert f"user_id: \"{user}\"" in capsys.readouterr().out
