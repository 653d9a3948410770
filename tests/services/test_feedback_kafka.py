"""Generate + SubmitFeedback against the real broker; read the topics back with
a plain kafka-python consumer."""

from __future__ import annotations

import uuid

import grpc
import pytest

from personalize.v1 import assistant_pb2 as pb
from tests.services.helpers import generate
from tests.support.topics import read_topic


def thumbs(user_id: str, response_id: str, up: bool, **kw) -> pb.FeedbackRequest:  # type: ignore[no-untyped-def]
    return pb.FeedbackRequest(user_id=user_id, thumbs=pb.Thumbs(response_id=response_id, up=up),
                              **kw)


def ranking(user_id: str, ids: list[str], **kw) -> pb.FeedbackRequest:  # type: ignore[no-untyped-def]
    return pb.FeedbackRequest(user_id=user_id, ranking=pb.Ranking(response_ids=ids), **kw)


def test_generations_and_feedback_reach_their_topics(stub, broker) -> None:  # type: ignore[no-untyped-def]
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    a = generate(stub, alice, "tell me a joke", max_tokens=8)
    b = generate(stub, bob, "list three fruits", num_candidates=3, max_tokens=8)
    ack1 = stub.SubmitFeedback(thumbs(alice, a.response_ids[0], True, feedback_id="fb-a-1"))
    assert ack1.feedback_id == "fb-a-1"
    ranked = [b.response_ids[2], b.response_ids[0], b.response_ids[1]]
    ack2 = stub.SubmitFeedback(ranking(bob, ranked, labeler_id="rater-7"))
    assert ack2.feedback_id and ack2.offset >= 0

    users = {alice, bob}
    gens = read_topic(broker.bootstrap, "generations",
                      lambda rs: sum(r["key"] in users for r in rs) >= 4)
    gens = [g for g in gens if g["key"] in users]
    assert len(gens) == 4
    for g in gens:
        v = g["value"]
        assert g["key"] == v["user_id"] and v["schema_version"] == 1 and v["type"] == "generation"
        assert v["completion_token_ids"] and v["prompt_token_ids"] and v["base_model"]
        assert v["messages"][-1]["role"] == "user" and v["adapter_version"] == ""
        assert v["sampling"]["max_tokens"] == 8
    by_id = {g["value"]["response_id"]: g["value"] for g in gens}
    assert by_id[a.response_ids[0]]["completion"] == a.texts[0]
    assert {by_id[r]["group_id"] for r in ranked} == {by_id[ranked[0]]["group_id"]}

    fbs = read_topic(broker.bootstrap, "feedback",
                     lambda rs: sum(r["key"] in users for r in rs) >= 2)
    fbs = {f["key"]: f for f in fbs if f["key"] in users}
    fa, fb = fbs[alice]["value"], fbs[bob]["value"]
    assert fa["kind"] == "thumbs" and fa["up"] is True and fa["feedback_id"] == "fb-a-1"
    assert fa["response_ids"] == [a.response_ids[0]] and fa["labeler_id"] == alice
    assert fb["kind"] == "ranking" and fb["response_ids"] == ranked
    assert fb["labeler_id"] == "rater-7" and fb["up"] is None
    assert fbs[bob]["offset"] == ack2.offset and fbs[bob]["partition"] == ack2.partition


def _forged(response_id: str) -> str:
    head, payload, sig = response_id.split(".")
    return f"{head}.{payload}.{'A' * len(sig)}"


def _expect(stub, request, code: grpc.StatusCode, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitFeedback(request, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details()


def test_feedback_rejections(stub, user_id: str) -> None:  # type: ignore[no-untyped-def]
    other = f"other-{uuid.uuid4().hex[:6]}"
    one = generate(stub, user_id, num_candidates=2, max_tokens=4)
    two = generate(stub, user_id, max_tokens=4)
    theirs = generate(stub, other, max_tokens=4)
    ids = one.response_ids
    invalid, denied = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
    _expect(stub, thumbs(user_id, theirs.response_ids[0], True), denied, "not issued to this user")
    _expect(stub, thumbs(user_id, _forged(ids[0]), True), invalid, "does not verify")
    _expect(stub, thumbs(user_id, "not-an-id", True), invalid, "is not a response id")
    _expect(stub, thumbs(user_id, "", True), invalid, "response_id is required")
    _expect(stub, ranking(user_id, [ids[0]]), invalid, "at least 2")
    _expect(stub, ranking(user_id, [ids[0], ids[0]]), invalid, "same response twice")
    _expect(stub, ranking(user_id, [ids[0], two.response_ids[0]]), invalid, "different prompts")
    _expect(stub, pb.FeedbackRequest(user_id=user_id), invalid, "either thumbs or ranking")
    _expect(stub, thumbs(user_id, ids[0], True, feedback_id="bad id/.."), invalid, "feedback_id")
    _expect(stub, thumbs("../x", ids[0], True), invalid, "user_id '../x' is invalid")
    # the valid one still goes through afterwards
    assert stub.SubmitFeedback(ranking(user_id, [ids[1], ids[0]])).feedback_id


def test_user_status_counts(stub, user_id: str) -> None:  # type: ignore[no-untyped-def]
    out = generate(stub, user_id, max_tokens=4)
    stub.SubmitFeedback(thumbs(user_id, out.response_ids[0], False))
    status = stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id))
    assert status.user_id == user_id and status.adapter_version == ""
    assert status.generations_served == 1 and status.feedback_accepted == 1
