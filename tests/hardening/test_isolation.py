"""Isolation between users on a server with auth on: nobody rates another user's
responses (forged, foreign or replayed ids included), is served another user's
adapter, or reads another user's status; ids that reach the file system are
validated (no traversal, no odd characters)."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from services.contract.errors import InvalidArgument
from services.contract.records import AdapterUpdateRecord
from services.contract.store import AdapterStore
from services.server.response_ids import ResponseRef, ResponseSigner
from tests.hardening.conftest import Tokens
from tests.services.helpers import chat_request, generate
from tests.support.adapters import make_adapter
from tests.support.topics import read_topic

DENIED, INVALID = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT
BAD_IDS = ["..", ".", "../alice", "alice/../bob", "/etc/passwd", "a/b", "a\\b", "..\\..\\x",
           "%2e%2e%2f", "-dash", ".hidden", "_x", "a b", "a\x00b", "alice\n", "a" * 65,
           "\uff41lice", "alic\u00e9", "\u202eevil", "~root", "$HOME", "a:b", "a*", ""]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forgeries(victim_id: str, attacker: str) -> dict[str, str]:
    """Response ids an attacker could make from a victim's id, without the key."""
    prefix, payload, sig = victim_id.split(".")
    fields = unb64(payload).split(b"\x1f")
    as_attacker = b64(b"\x1f".join([attacker.encode(), *fields[1:]]))
    other_index = b64(b"\x1f".join([*fields[:2], b"3", fields[3]]))
    flipped = bytearray(unb64(sig))
    flipped[0] ^= 1
    other_key = ResponseSigner([b"k" * 32]).sign(
        ResponseRef(attacker, fields[1].decode(), 0, int(time.time() * 1000)))
    return {
        "payload re-addressed to the attacker": f"{prefix}.{as_attacker}.{sig}",
        "candidate index changed": f"{prefix}.{other_index}.{sig}",
        "signature bit flipped": f"{prefix}.{payload}.{b64(bytes(flipped))}",
        "signature truncated": f"{prefix}.{payload}.{sig[:8]}",
        "signature removed": f"{prefix}.{payload}.",
        "signed with another key": other_key,
        "other version prefix": f"r2.{payload}.{sig}",
        "extra section": f"{victim_id}.AAAA",
        "not base64": "r1.!!!.???",
        "not ascii": "r1.\u00e9\u00e9.\u00e9\u00e9",
        "too long": "r1." + "A" * 300 + ".AAAA",
        "garbage": "hello",
    }


def feedback_code(stub, user: str, md, response_ids: list[str], feedback_id: str,  # type: ignore[no-untyped-def]
                  labeler: str = "") -> tuple[grpc.StatusCode, str]:
    kind = ({"thumbs": pb.Thumbs(response_id=response_ids[0], up=True)}
            if len(response_ids) == 1 else {"ranking": pb.Ranking(response_ids=response_ids)})
    try:
        stub.SubmitFeedback(pb.FeedbackRequest(user_id=user, labeler_id=labeler,
                                               feedback_id=feedback_id, **kind),
                            metadata=md, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_nobody_rates_another_users_responses(secure_stub, secure_server, stub,  # type: ignore[no-untyped-def]
                                              tokens: Tokens, user_id: str) -> None:
    alice, bob = f"{user_id}-alice", f"{user_id}-bob"
    a = generate(secure_stub, alice, metadata=tokens(alice), num_candidates=2, max_tokens=2)
    b = generate(secure_stub, bob, metadata=tokens(bob), num_candidates=2, max_tokens=2)
    alice_ids, bob_ids = list(a.response_ids.values()), list(b.response_ids.values())
    as_bob, admin = tokens(bob), tokens("ops", admin=True)
    # authentic ids of another user (e.g. replayed from a captured request)
    cases = {
        "bob thumbs alice's response": (bob, as_bob, alice_ids[:1], DENIED, "not issued"),
        "bob ranks alice's responses": (bob, as_bob, alice_ids, DENIED, "not issued"),
        "bob mixes his and alice's": (bob, as_bob, [bob_ids[0], alice_ids[0]], DENIED,
                                      "not issued"),
        "bob claims to be alice": (alice, as_bob, alice_ids[:1], DENIED, "token is for"),
        "an admin cannot re-address it": (bob, admin, alice_ids[:1], DENIED, "not issued"),
    }
    # forged or foreign ids: they do not verify, whoever sends them
    for name, forged in forgeries(alice_ids[0], bob).items():
        cases[f"forged: {name}"] = (bob, as_bob, [forged], INVALID, "")
    foreign = generate(stub, bob, max_tokens=2).response_ids[0]  # the open server's key
    cases["an id from another deployment"] = (bob, as_bob, [foreign], INVALID, "signature")
    rejected = []
    for i, (name, (user, md, ids, code, words)) in enumerate(cases.items()):
        got, details = feedback_code(secure_stub, user, md, ids, f"rejected-{i}")
        assert got == code and words in details, (name, got, details)
        rejected.append(f"rejected-{i}")
    assert feedback_code(secure_stub, bob, as_bob, bob_ids[:1], "accepted")[0] == \
        grpc.StatusCode.OK
    # nothing rejected reached Kafka: the accepted event is there, alone
    kafka = secure_server.cfg.kafka
    records = read_topic(kafka.bootstrap_servers, kafka.feedback_topic,
                         lambda rs: any(r["value"]["feedback_id"] == "accepted" and
                                        r["value"]["user_id"] == bob for r in rs))
    mine = [r["value"]["feedback_id"] for r in records if r["value"]["user_id"] in (alice, bob)]
    assert mine == ["accepted"], mine


def test_only_ever_served_own_adapter(secure_stub, secure_server, loop_thread, tokens: Tokens,  # type: ignore[no-untyped-def]
                                      tiny_model_dir: Path, tmp_path: Path, user_id: str) -> None:
    alice, bob = f"{user_id}-alice", f"{user_id}-bob"
    store: AdapterStore = secure_server.store
    prompt = dict(text="tell me about the sea", max_tokens=8, temperature=0.0)
    base = generate(secure_stub, bob, metadata=tokens(bob), **prompt).texts[0]
    store.publish(alice, make_adapter(tiny_model_dir, tmp_path / "a", seed=5),
                  secure_server.engine.model_id, store.latest(alice) or "")
    # bob's directory holds a copy of alice's adapter: its manifest names alice
    shutil.copytree(store.version_dir(alice, "v1"), store.user_dir(bob) / "v1")
    loop_thread.run(secure_server.adapters.scan())
    mine = generate(secure_stub, alice, metadata=tokens(alice), **prompt)
    assert mine.finished[0].adapter_version == "v1" and mine.texts[0] != base
    theirs = generate(secure_stub, bob, metadata=tokens(bob), **prompt)
    assert theirs.finished[0].adapter_version == "" and theirs.texts[0] == base, \
        "bob must never get alice's weights"
    assert secure_server.adapters.version_of(bob) == ""
    refused = secure_server.metrics.adapter_refusals.labels("mismatch")._value.get()
    assert refused >= 1, "the copied adapter is refused for bob"
    stream = secure_stub.Generate(chat_request(alice, **prompt), metadata=tokens(bob), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == DENIED
    # an adapter update naming a path never installs anything
    for bad in ("../" + alice, alice + "/../" + bob):
        record = AdapterUpdateRecord(user_id=bad, version="v1", sha256="0" * 64,
                                     base_model="tiny-llama", created_at=time.time())
        loop_thread.run(secure_server.adapters.on_update(record.to_json()))
        assert secure_server.adapters.version_of(bad) == ""


def test_nobody_reads_another_users_status(secure_stub, tokens: Tokens, user_id: str) -> None:  # type: ignore[no-untyped-def]
    alice, bob = f"{user_id}-alice", f"{user_id}-bob"
    generate(secure_stub, alice, metadata=tokens(alice), max_tokens=2)
    request = pb.UserStatusRequest(user_id=alice)
    with pytest.raises(grpc.RpcError) as err:
        secure_stub.GetUserStatus(request, metadata=tokens(bob), timeout=30)
    assert err.value.code() == DENIED and "may not act for user_id" in err.value.details()
    own = secure_stub.GetUserStatus(request, metadata=tokens(alice), timeout=30)
    by_admin = secure_stub.GetUserStatus(request, metadata=tokens("ops", admin=True), timeout=30)
    assert own.generations_served == by_admin.generations_served == 1
    assert secure_stub.GetUserStatus(pb.UserStatusRequest(user_id=bob), metadata=tokens(bob),
                                     timeout=30).generations_served == 0


def test_ids_that_reach_the_file_system(secure_stub, secure_server, tokens: Tokens,  # type: ignore[no-untyped-def]
                                        user_id: str) -> None:
    root = Path(secure_server.store.root)
    admin, as_user = tokens("ops", admin=True), tokens(user_id)
    rid = generate(secure_stub, user_id, metadata=as_user, max_tokens=2).response_ids[0]
    before = {p for p in root.parent.rglob("*")}
    for bad in BAD_IDS:
        requests = {
            "Generate": lambda u: list(secure_stub.Generate(chat_request(u, max_tokens=2),
                                                            metadata=admin, timeout=30)),
            "SubmitFeedback": lambda u: secure_stub.SubmitFeedback(pb.FeedbackRequest(
                user_id=u, thumbs=pb.Thumbs(response_id=rid, up=True)), metadata=admin,
                timeout=30),
            "GetUserStatus": lambda u: secure_stub.GetUserStatus(
                pb.UserStatusRequest(user_id=u), metadata=admin, timeout=30),
        }
        for name, call in requests.items():
            with pytest.raises(grpc.RpcError) as err:
                call(bad)
            assert err.value.code() == INVALID and "user_id" in err.value.details(), \
                (name, bad, err.value.details())
        # a user's token names its subject only: anything else is refused first
        assert feedback_code(secure_stub, bad, as_user, [rid], "x")[0] == DENIED
        if bad:
            code, details = feedback_code(secure_stub, user_id, admin, [rid], "x", labeler=bad)
            assert code == INVALID and "labeler_id" in details, (bad, details)
        with pytest.raises(InvalidArgument):
            secure_server.store.user_dir(bad)
        with pytest.raises(InvalidArgument):
            secure_server.store.version_dir(user_id, bad or "v")
    assert {p for p in root.parent.rglob("*")} == before, "a bad id touched the file system"
    # a token cannot carry a path either
    with pytest.raises(InvalidArgument, match="subject"):
        tokens.token("../" + user_id)
