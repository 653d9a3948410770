"""Bearer-token authentication: tokens checked on every Assistant call of a server
with a secret, UNAUTHENTICATED vs PERMISSION_DENIED precisely, health and
reflection open, the `personalize token` command, and the open local default."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalize.v1 import assistant_pb2 as pb
from services.client.sdk import AssistantClient
from services.contract.auth import AuthConfig, Authenticator, Caller
from services.contract.config import from_mapping
from services.contract.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.server.config import ServerConfig
from tests.hardening.conftest import AUTH, SECRET, Metadata, Tokens, bearer
from tests.services.helpers import chat_request, generate
from tests.support.topics import isolated_kafka

OTHER_SECRET = "o" * 40
UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def claims(sub: str = "alice", **over: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": sub, "iss": AUTH.issuer, "aud": AUTH.audience, "iat": now,
            "exp": now + 600, "role": "user", **over}


def signed(body: dict[str, object], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(body, key, algorithm=alg)


def calls(stub, user: str, md: Metadata | None, response_id: str = "x") -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Each RPC for ``user`` with metadata ``md``: the status code it ends with."""
    out: dict[str, object] = {}
    attempts = {
        "Generate": lambda: list(stub.Generate(chat_request(user, max_tokens=2), metadata=md,
                                               timeout=30)),
        "SubmitFeedback": lambda: stub.SubmitFeedback(pb.FeedbackRequest(
            user_id=user, thumbs=pb.Thumbs(response_id=response_id, up=True)), metadata=md,
            timeout=30),
        "GetUserStatus": lambda: stub.GetUserStatus(pb.UserStatusRequest(user_id=user),
                                                    metadata=md, timeout=30),
    }
    for name, call in attempts.items():
        try:
            call()
            out[name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            out[name] = (exc.code(), exc.details())
    return out


# -- the pure part --------------------------------------------------------------------

def test_issue_and_authenticate() -> None:
    auth = Authenticator(AUTH)
    assert auth.authenticate(bearer(auth.issue("alice", 60))) == Caller("alice", admin=False)
    assert auth.authenticate(bearer(auth.issue("ops", 60, admin=True))) == Caller("ops", True)
    # rotation: the first secret signs, every secret verifies
    rotated = Authenticator(AuthConfig(secrets=f"{'n' * 40},{SECRET}"))
    assert rotated.authenticate(bearer(auth.issue("alice", 60))).subject == "alice"
    with pytest.raises(Unauthenticated, match="signature"):
        auth.authenticate(bearer(rotated.issue("bob", 60)))
    # authorisation: a user token acts for its subject only; admin for anyone
    Authenticator.authorize(Caller("alice"), "alice", "alice")
    with pytest.raises(PermissionDenied, match="may not act for user_id 'bob'"):
        Authenticator.authorize(Caller("alice"), "bob")
    with pytest.raises(PermissionDenied, match="labeler_id 'carol' needs an admin token"):
        Authenticator.authorize(Caller("alice"), "alice", "carol")
    Authenticator.authorize(Caller("ops", admin=True), "bob", "carol")


# Built when the test runs (not at collection), so their times are current.
BAD_CREDENTIALS: list[tuple[Callable[[], Metadata], str]] = [
    (lambda: (), "missing credentials"),
    (lambda: (("x-other", "1"),), "missing credentials"),
    (lambda: (("authorization", "Basic YWxpY2U6cHc="),), "not a bearer token"),
    (lambda: (("authorization", "Bearer"),), "not a bearer token"),
    (lambda: (("authorization", "Bearer "),), "not a bearer token"),
    (lambda: (("authorization", "Bearer not.a.jwt"),), "malformed"),
    (lambda: (("authorization", "Bearer " + "a" * 5000),), "longer than"),
    (lambda: bearer(signed(claims(), OTHER_SECRET)), "signature does not verify"),
    (lambda: bearer(signed(claims(exp=int(time.time()) - 3600))), "expired"),
    (lambda: bearer(signed(claims(iat=int(time.time()) + 3600))), "not valid yet"),
    (lambda: bearer(signed(claims(aud="someone-else"))), "audience"),
    (lambda: bearer(signed(claims(iss="evil"))), "issued by"),
    (lambda: bearer(signed({k: v for k, v in claims().items() if k != "exp"})), "'exp' claim"),
    (lambda: bearer(signed({k: v for k, v in claims().items() if k != "sub"})), "'sub' claim"),
    (lambda: bearer(signed(claims(role="root"))), "role"),
    (lambda: bearer(signed(claims(sub="../../etc"))), "token subject"),
    (lambda: bearer(signed(claims(), SECRET, alg="HS512")), "malformed"),
    (lambda: bearer(jwt.encode(claims(), None, algorithm="none")), "malformed"),
    (lambda: bearer(Authenticator(AUTH).issue("alice", 60)) * 2, "more than one"),
]


@pytest.mark.parametrize(("make", "message"), BAD_CREDENTIALS)
def test_bad_credentials(make: Callable[[], Metadata], message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        Authenticator(AUTH).authenticate(make())


def test_config_and_issuing_rules(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = from_mapping(ServerConfig, {"P_AUTH_SECRETS": SECRET, "P_AUTH_LEEWAY_S": "5"}, "P_")
    assert cfg.auth.secrets == SECRET and cfg.auth.leeway_s == 5.0
    with pytest.raises(ValueError, match="at least 32 characters"):
        Authenticator(AuthConfig(secrets="short"))
    (tmp_path / "secrets").write_text(f"{SECRET}\n{OTHER_SECRET}\n")
    from_file = Authenticator(AuthConfig(secrets_file=str(tmp_path / "secrets")))
    assert from_file.enabled and from_file.authenticate(
        bearer(Authenticator(AuthConfig(secrets=OTHER_SECRET)).issue("bob", 60))).subject == "bob"
    (tmp_path / "empty").write_text("\n")  # a mounted secret left empty fails closed
    with pytest.raises(ValueError, match="holds no secret"):
        Authenticator(AuthConfig(secrets_file=str(tmp_path / "empty")))
    off = Authenticator(AuthConfig())
    assert not off.enabled and off.authenticate(()) == Caller("", admin=True)
    with pytest.raises(ValueError, match="no auth secret"):
        off.issue("alice", 60)
    with pytest.raises(InvalidArgument):
        Authenticator(AUTH).issue("../alice", 60)


# -- on the server ----------------------------------------------------------------

def test_unauthenticated_on_every_rpc(secure_stub, user_id: str) -> None:  # type: ignore[no-untyped-def]
    for md in [None, bearer("garbage"), bearer(signed(claims(user_id), OTHER_SECRET)),
               bearer(signed(claims(user_id, exp=int(time.time()) - 120)))]:
        for name, outcome in calls(secure_stub, user_id, md).items():
            assert isinstance(outcome, tuple) and outcome[0] == UNAUTH, (name, md, outcome)
            assert "token" in outcome[1] or "credentials" in outcome[1]


def test_own_user_ok_other_user_permission_denied(secure_stub, tokens: Tokens,  # type: ignore[no-untyped-def]
                                                  user_id: str) -> None:
    md = tokens(user_id)
    out = generate(secure_stub, user_id, metadata=md, max_tokens=2)
    assert calls(secure_stub, user_id, md, out.response_ids[0]) == dict.fromkeys(
        ("Generate", "SubmitFeedback", "GetUserStatus"), grpc.StatusCode.OK)
    for name, outcome in calls(secure_stub, "someone-else", md, out.response_ids[0]).items():
        assert isinstance(outcome, tuple) and outcome[0] == DENIED, (name, outcome)
        assert f"the token is for user '{user_id}'" in outcome[1]
    with pytest.raises(grpc.RpcError) as err:
        secure_stub.SubmitFeedback(pb.FeedbackRequest(
            user_id=user_id, labeler_id="someone-else",
            thumbs=pb.Thumbs(response_id=out.response_ids[0], up=True)), metadata=md, timeout=30)
    assert err.value.code() == DENIED and "needs an admin token" in err.value.details()


def test_admin_acts_for_any_user(secure_stub, tokens: Tokens, user_id: str) -> None:  # type: ignore[no-untyped-def]
    out = generate(secure_stub, user_id, metadata=tokens(user_id), max_tokens=2)
    admin = tokens("ops", admin=True)
    status = secure_stub.GetUserStatus(pb.UserStatusRequest(user_id=user_id), metadata=admin,
                                       timeout=30)
    assert status.user_id == user_id and status.generations_served == 1
    ack = secure_stub.SubmitFeedback(pb.FeedbackRequest(
        user_id=user_id, labeler_id="labeler-7",
        thumbs=pb.Thumbs(response_id=out.response_ids[0], up=False)), metadata=admin, timeout=30)
    assert ack.feedback_id


def test_health_and_reflection_need_no_token(secure_channel) -> None:  # type: ignore[no-untyped-def]
    reply = health_pb2_grpc.HealthStub(secure_channel).Check(
        health_pb2.HealthCheckRequest(service="personalize.v1.Assistant"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(secure_channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    assert "personalize.v1.Assistant" in {s.name for r in replies
                                          for s in r.list_services_response.service}


def test_sdk_sends_its_token(secure_server, tokens: Tokens, user_id: str) -> None:  # type: ignore[no-untyped-def]
    target = f"127.0.0.1:{secure_server.port}"
    with AssistantClient(target, token=tokens.token(user_id)) as client:
        [cand] = client.complete(user_id, "hi", max_tokens=2)
        assert client.thumbs(user_id, cand.response_id, True).feedback_id
        assert client.status(user_id).feedback_accepted == 1
    with AssistantClient(target) as anonymous, pytest.raises(grpc.RpcError) as err:
        anonymous.status(user_id)
    assert err.value.code() == UNAUTH


def test_open_default_says_so_loudly(servers, broker, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="services.server.main")
    srv = servers.start(isolated_kafka(broker.bootstrap, "open"))
    try:
        assert not srv.auth.enabled
        assert "AUTHENTICATION IS OFF" in caplog.text and "act as ANY user" in caplog.text
    finally:
        servers.stop(srv)
    caplog.clear()
    secure = servers.start(isolated_kafka(broker.bootstrap, "open"), auth=AUTH)
    servers.stop(secure)
    assert "AUTHENTICATION IS OFF" not in caplog.text


# -- the CLI ------------------------------------------------------------------------

def cli(*args: str, env: dict[str, str] | None = None,
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.client.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_token_command_and_cli_with_token(secure_server, user_id: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PERSONALIZE_SERVER_AUTH_SECRETS": SECRET}
    issued = cli("token", "--user", user_id, "--ttl", "120", env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    caller = Authenticator(AUTH).authenticate(bearer(token))
    assert caller == Caller(user_id, admin=False)
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUTH.audience)
    assert body["exp"] - body["iat"] == 120
    (tmp_path / "s").write_text(SECRET)
    admin = cli("token", "--user", "ops", "--admin", "--secrets-file", str(tmp_path / "s"))
    assert Authenticator(AUTH).authenticate(bearer(admin.stdout.strip())).admin
    refused = cli("token", "--user", "x", env={"PERSONALIZE_SERVER_AUTH_SECRETS": ""})
    assert refused.returncode == 2 and "no auth secret" in refused.stderr
    bad_user = cli("token", "--user", "../x", env=env)
    assert bad_user.returncode == 2 and "subject" in bad_user.stderr

    server = ("--server", f"127.0.0.1:{secure_server.port}")
    ok = cli("status", "--user", user_id, "--token", token, *server)
    assert ok.returncode == 0 and user_id in ok.stdout, ok.stderr
    from_env = cli("chat", "--user", user_id, "--max-tokens", "2", *server,
                   env={"PERSONALIZE_TOKEN": token}, stdin="hello\nu\n\n")
    assert from_env.returncode == 0 and "feedback recorded" in from_env.stdout, from_env.stderr
    anonymous = cli("status", "--user", user_id, *server, env={"PERSONALIZE_TOKEN": ""})
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    other = cli("status", "--user", "someone-else", "--token", token, *server)
    assert other.returncode == 1 and "PERMISSION_DENIED" in other.stderr
