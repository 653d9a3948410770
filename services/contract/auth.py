"""Per-user bearer tokens: who is calling (authentication) and for whom they may
act (authorisation).

A token is an HS256-signed JWT sent as gRPC metadata ``authorization: Bearer
<token>``. Claims: ``sub`` (the user id), ``iss``, ``aud``, ``iat``, ``exp``
and ``role`` (``user`` or ``admin``). A user token acts only for its subject:
``user_id`` (and ``labeler_id``, when given) must equal ``sub``. An admin
token is for operators: it may act for any user (status of any user, feedback
from several labelers through a labelling back-end).

With no secret configured authentication is off (the local default): every
call may act for any user, and the server says so loudly at start-up.
Health checks and reflection never need a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt

from services.contract.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.contract.ids import validate_user_id


@dataclass(frozen=True)
class AuthConfig:
    """Per-user bearer tokens (HS256-signed JWTs) on every Assistant call."""

    secrets: str = ""
    """Comma-separated signing secrets, each at least 32 characters; the first
    signs new tokens, all verify (rotation). Empty, with no secrets_file: auth
    is OFF and anyone who reaches the port may act as any user (local default)."""
    secrets_file: str = ""
    """File holding the secrets (comma- or newline-separated), read at start-up;
    keeps them out of the environment and the process list."""
    issuer: str = "personalize"
    """The tokens' ``iss`` claim (issued and required)."""
    audience: str = "personalize.v1.Assistant"
    """The tokens' ``aud`` claim (issued and required)."""
    leeway_s: float = 30.0
    """Clock skew tolerated on ``exp`` and ``iat``."""


ALGORITHM = "HS256"
ADMIN, USER = "admin", "user"
MIN_SECRET_CHARS = 32
MAX_TOKEN_CHARS = 4096
_CLAIMS = ["sub", "iss", "aud", "iat", "exp"]
_HOW = "send metadata 'authorization: Bearer <token>' (personalize token --user <id>)"


@dataclass(frozen=True)
class Caller:
    """Who a call comes from. ``subject`` is empty when auth is off."""

    subject: str
    admin: bool = False


OPEN = Caller(subject="", admin=True)
"""The caller of every call while auth is off: may act for anyone."""


def load_secrets(cfg: AuthConfig) -> list[str]:
    """The configured secrets, first signs; raises ValueError for short ones."""
    raw = cfg.secrets
    if cfg.secrets_file:
        raw += "," + Path(cfg.secrets_file).read_text()
    secrets = [s.strip() for s in raw.replace("\n", ",").split(",") if s.strip()]
    if cfg.secrets_file and not secrets:  # a mounted but empty secret must not open the door
        raise ValueError(f"auth secrets file {cfg.secrets_file} holds no secret; put one in "
                         "(openssl rand -hex 32) or unset the file to run open")
    for s in secrets:
        if len(s) < MIN_SECRET_CHARS:
            raise ValueError(f"auth secrets must be at least {MIN_SECRET_CHARS} characters "
                             f"(got one of {len(s)}); make one with: openssl rand -hex 32")
    return secrets


class Authenticator:
    """Issues and checks tokens with the configured secrets."""

    def __init__(self, cfg: AuthConfig) -> None:
        self._cfg = cfg
        self._secrets = load_secrets(cfg)

    @property
    def enabled(self) -> bool:
        return bool(self._secrets)

    def issue(self, subject: str, ttl_s: float, admin: bool = False,
              now: float | None = None) -> str:
        """A token for ``subject`` valid for ``ttl_s`` seconds."""
        if not self.enabled:
            raise ValueError("no auth secret configured: set PERSONALIZE_SERVER_AUTH_SECRETS")
        if ttl_s <= 0:
            raise ValueError(f"ttl must be positive, got {ttl_s}")
        validate_user_id(subject, "subject")
        issued = int(time.time() if now is None else now)
        claims = {"sub": subject, "iss": self._cfg.issuer, "aud": self._cfg.audience,
                  "iat": issued, "exp": issued + int(ttl_s), "role": ADMIN if admin else USER}
        return jwt.encode(claims, self._secrets[0], algorithm=ALGORITHM)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller named by the call's bearer token; Unauthenticated otherwise."""
        if not self.enabled:
            return OPEN
        values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if not values:
            raise Unauthenticated(f"missing credentials: {_HOW}")
        if len(values) > 1:
            raise Unauthenticated("more than one authorization header")
        value = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) \
            else values[0]
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(f"authorization metadata is not a bearer token: {_HOW}")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"token is longer than {MAX_TOKEN_CHARS} characters")
        return self._caller(self._decode(token))

    def _decode(self, token: str) -> dict[str, object]:
        for secret in self._secrets:
            try:
                return jwt.decode(token, secret, algorithms=[ALGORITHM],
                                  audience=self._cfg.audience, issuer=self._cfg.issuer,
                                  leeway=self._cfg.leeway_s, options={"require": _CLAIMS})
            except jwt.InvalidSignatureError:
                continue  # try the next secret (rotation)
            except jwt.ExpiredSignatureError as exc:
                raise Unauthenticated("token has expired: get a new one") from exc
            except jwt.ImmatureSignatureError as exc:
                raise Unauthenticated("token is not valid yet (issued in the future)") from exc
            except jwt.InvalidAudienceError as exc:
                raise Unauthenticated(f"token is not for audience {self._cfg.audience!r}") \
                    from exc
            except jwt.InvalidIssuerError as exc:
                raise Unauthenticated(f"token was not issued by {self._cfg.issuer!r}") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from exc
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"token is malformed: {exc}") from exc
        raise Unauthenticated("token signature does not verify (forged, or signed with "
                              "another secret)")

    def _caller(self, claims: dict[str, object]) -> Caller:
        subject, role = claims.get("sub"), claims.get("role", USER)
        if role not in (USER, ADMIN):
            raise Unauthenticated(f"token role {str(role)[:20]!r} is unknown")
        try:
            validate_user_id(subject if isinstance(subject, str) else "", "token subject")
        except InvalidArgument as exc:
            raise Unauthenticated(str(exc)) from exc
        return Caller(subject=str(subject), admin=role == ADMIN)

    @staticmethod
    def authorize(caller: Caller, user_id: str, labeler_id: str = "") -> None:
        """PermissionDenied unless ``caller`` may act for ``user_id`` (and ``labeler_id``)."""
        if caller.admin:
            return
        if user_id != caller.subject:
            raise PermissionDenied(f"the token is for user {caller.subject!r}; it may not act "
                                   f"for user_id {user_id[:80]!r}")
        if labeler_id and labeler_id != caller.subject:
            raise PermissionDenied(f"the token is for user {caller.subject!r}; labeler_id "
                                   f"{labeler_id[:80]!r} needs an admin token")

    def check_admin(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """Authenticate the call; PermissionDenied unless it carries an admin token
        (lifecycle operations). With auth off every caller may."""
        caller = self.authenticate(metadata)
        if not caller.admin:
            raise PermissionDenied(f"the token is for user {caller.subject!r}; lifecycle "
                                   "operations need an admin token")
        return caller

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, user_id: str,
              labeler_id: str = "") -> Caller:
        """Authenticate the call, then authorise it for ``user_id``."""
        caller = self.authenticate(metadata)
        self.authorize(caller, user_id, labeler_id)
        return caller
