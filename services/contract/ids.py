"""Ids that reach the file system or name an adapter version, validated the same way
by the server, the trainer and the store."""

from __future__ import annotations

import re

from services.contract.errors import InvalidArgument

_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION = re.compile(r"v[0-9]{1,12}")


def validate_user_id(user_id: str, what: str = "user_id") -> str:
    """User ids reach the file system: 1-64 of [A-Za-z0-9._-], starting alphanumeric."""
    if not user_id:
        raise InvalidArgument(f"{what} is required")
    if not _USER_ID.fullmatch(user_id):
        raise InvalidArgument(
            f"{what} {user_id[:80]!r} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return user_id


def validate_version(version: str) -> str:
    if not _VERSION.fullmatch(version or ""):
        raise InvalidArgument(f"adapter version {version[:40]!r} is invalid: expected v<number>")
    return version


def version_number(version: str) -> int:
    return int(validate_version(version)[1:])
