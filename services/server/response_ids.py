"""Response ids that any replica can verify: HMAC-SHA256 signed, bound to a user.

Format: ``r1.<payload>.<signature>`` (URL-safe base64, no padding). The payload
is ``user_id \\x1f group_id \\x1f candidate_index \\x1f issued_at_ms``. The
group id names one Generate call, so a ranking can check that its responses
come from the same prompt. Several keys may verify (rotation); the first signs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.contract.errors import InvalidArgument, PermissionDenied

_PREFIX = "r1"
_SEP = "\x1f"
_SIG_BYTES = 16
MAX_RESPONSE_ID_LEN = 256


@dataclass(frozen=True)
class ResponseRef:
    """What a verified response id says."""

    user_id: str
    group_id: str
    candidate_index: int
    issued_at_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ResponseSigner:
    """Signs and verifies response ids with HMAC-SHA256."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys or any(len(k) < 16 for k in keys):
            raise ValueError("response-id keys must be given and at least 16 bytes long")
        # HMAC's keyed state (key padding, inner and outer hashes) is computed once per
        # key; each id copies it
        self._keyed = [hmac.new(k, digestmod=hashlib.sha256) for k in keys]

    def _mac(self, keyed: hmac.HMAC, payload: bytes) -> bytes:
        mac = keyed.copy()
        mac.update(payload)
        return mac.digest()[:_SIG_BYTES]

    def sign(self, ref: ResponseRef) -> str:
        payload = _SEP.join(
            [ref.user_id, ref.group_id, str(ref.candidate_index), str(ref.issued_at_ms)]
        ).encode()
        return f"{_PREFIX}.{_b64(payload)}.{_b64(self._mac(self._keyed[0], payload))}"

    def verify(self, response_id: str, user_id: str) -> ResponseRef:
        """The reference inside ``response_id`` if it is authentic and ``user_id``'s.

        Raises InvalidArgument for malformed or forged ids and PermissionDenied
        for an authentic id issued to another user.
        """
        if not response_id:
            raise InvalidArgument("response_id is empty")
        if len(response_id) > MAX_RESPONSE_ID_LEN:
            raise InvalidArgument(f"response_id is longer than {MAX_RESPONSE_ID_LEN} characters")
        parts = response_id.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise InvalidArgument(f"response_id {response_id[:40]!r} is not a response id")
        try:
            payload, signature = _unb64(parts[1]), _unb64(parts[2])
        except ValueError as exc:
            raise InvalidArgument("response_id is not valid base64") from exc
        if not any(hmac.compare_digest(self._mac(k, payload), signature) for k in self._keyed):
            raise InvalidArgument("response_id signature does not verify (forged or foreign)")
        fields = payload.decode("utf-8", "replace").split(_SEP)
        if len(fields) != 4:
            raise InvalidArgument("response_id payload is malformed")
        ref = ResponseRef(fields[0], fields[1], int(fields[2]), int(fields[3]))
        if not hmac.compare_digest(ref.user_id.encode(), user_id.encode()):
            raise PermissionDenied("response_id was not issued to this user")
        return ref


def load_keys(configured: str, store_root: Path) -> list[bytes]:
    """Keys from configuration, else one kept in the adapter store (shared by replicas)."""
    if configured:
        return [k.strip().encode() for k in configured.split(",") if k.strip()]
    path = store_root / ".response-key"
    if not path.exists():
        store_root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # first writer wins when replicas race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return [path.read_text().strip().encode()]
