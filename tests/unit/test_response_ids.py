from __future__ import annotations

import pytest

from services.contract.errors import InvalidArgument, PermissionDenied
from services.server.response_ids import ResponseRef, ResponseSigner, load_keys

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def test_round_trip_and_user_binding() -> None:
    signer = ResponseSigner([KEY_A])
    ref = ResponseRef("alice", "g1", 2, 1234)
    rid = signer.sign(ref)
    assert signer.verify(rid, "alice") == ref
    with pytest.raises(PermissionDenied):
        signer.verify(rid, "bob")


def test_another_replica_with_the_same_key_verifies() -> None:
    rid = ResponseSigner([KEY_A]).sign(ResponseRef("alice", "g", 0, 1))
    assert ResponseSigner([KEY_A]).verify(rid, "alice").group_id == "g"


def test_rotation_old_key_still_verifies_new_key_signs() -> None:
    old = ResponseSigner([KEY_A]).sign(ResponseRef("alice", "g", 0, 1))
    rotated = ResponseSigner([KEY_B, KEY_A])
    assert rotated.verify(old, "alice").candidate_index == 0
    assert ResponseSigner([KEY_B]).verify(rotated.sign(ResponseRef("alice", "g", 0, 1)), "alice")


@pytest.mark.parametrize("bad", ["", "x", "r1.a", "r2.aaaa.bbbb", "r1.!!!.???", "r1." + "a" * 300])
def test_malformed_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ResponseSigner([KEY_A]).verify(bad, "alice")


def test_tampered_payload_or_signature_fails() -> None:
    signer = ResponseSigner([KEY_A])
    rid = signer.sign(ResponseRef("alice", "g", 0, 1))
    forged_user = ResponseSigner([KEY_B]).sign(ResponseRef("alice", "g", 0, 1))
    with pytest.raises(InvalidArgument, match="does not verify"):
        signer.verify(forged_user, "alice")
    head, _payload, sig = rid.split(".")
    swapped = signer.sign(ResponseRef("mallory", "g", 0, 1)).split(".")[1]
    with pytest.raises(InvalidArgument, match="does not verify"):
        signer.verify(f"{head}.{swapped}.{sig}", "mallory")


def test_short_keys_refused() -> None:
    with pytest.raises(ValueError):
        ResponseSigner([b"short"])


def test_generated_key_is_kept_in_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = load_keys("", tmp_path)
    assert load_keys("", tmp_path) == first and len(first[0]) >= 32
    assert (tmp_path / ".response-key").stat().st_mode & 0o077 == 0
    assert load_keys("k" * 20 + ",m" * 1, tmp_path)[0] == b"k" * 20
