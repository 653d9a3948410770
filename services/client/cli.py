"""``personalize``: chat with per-user feedback, user status, and the local stack.

    personalize chat --user alice                  # stream, then thumbs up/down
    personalize chat --user alice --candidates 3   # rank 3 candidates
    personalize status --user alice
    personalize token --user alice --ttl 86400     # a bearer token (auth on)
    personalize up                                 # the embedded stack
    personalize admin versions --user alice        # lifecycle (admin token):
    personalize admin rollback --user alice --version v2
    personalize admin pin --user alice --version v3
    personalize admin unpin --user alice
    personalize admin reset --user alice           # serve the base model
    personalize erase --user alice --yes           # delete the user's data (own token
                                                   # or admin token)

With auth on, chat, status, admin and erase take --token (or PERSONALIZE_TOKEN).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import grpc

from services.client.sdk import AssistantClient, Candidate


def _ask(prompt: str, read: Callable[[str], str]) -> str | None:
    try:
        return read(prompt).strip()
    except EOFError:
        return None


def parse_ranking(answer: str, n: int) -> list[int] | None:
    """'2 1 3' (1-based, best first) -> [1, 0, 2]; None if not a full ranking of 1..n
    (a missing last one is inferred)."""
    try:
        order = [int(tok) - 1 for tok in answer.replace(",", " ").split()]
    except ValueError:
        return None
    if len(order) == n - 1:
        order += sorted(set(range(n)) - set(order))[:1]
    return order if sorted(order) == list(range(n)) else None


def _single(client: AssistantClient, args: argparse.Namespace, history: list[dict[str, str]],
            read: Callable[[str], str]) -> str:
    reply, response_id, version = "", "", ""
    print("assistant> ", end="", flush=True)
    for piece in client.stream(args.user, history, max_tokens=args.max_tokens,
                               temperature=args.temperature):
        print(piece.text, end="", flush=True)
        reply += piece.text
        response_id, version = piece.response_id, piece.adapter_version
    print(f"\n  [adapter: {version or 'base model'}]")
    answer = _ask("rate it [u]p / [d]own / [enter] skip: ", read)
    if answer and answer[0].lower() in "ud":
        ack = client.thumbs(args.user, response_id, answer[0].lower() == "u")
        print(f"  feedback recorded ({ack.feedback_id})")
    return reply


def _ranked(client: AssistantClient, args: argparse.Namespace, history: list[dict[str, str]],
            read: Callable[[str], str]) -> str:
    candidates: list[Candidate] = client.complete(
        args.user, history, num_candidates=args.candidates, max_tokens=args.max_tokens,
        temperature=args.temperature)
    for c in candidates:
        print(f"--- [{c.index + 1}] ---\n{c.text}")
    print(f"  [adapter: {candidates[0].adapter_version or 'base model'}]")
    example = " ".join(map(str, [2, 1, *range(3, len(candidates) + 1)]))
    while True:
        answer = _ask(f"rank best first, e.g. '{example}' ([enter] skip): ", read)
        if not answer:
            return candidates[0].text
        order = parse_ranking(answer, len(candidates))
        if order is not None:
            break
        print(f"  please list the numbers 1-{len(candidates)} once each")
    ack = client.rank(args.user, [candidates[i].response_id for i in order])
    print(f"  ranking recorded ({ack.feedback_id})")
    return candidates[order[0]].text


def chat(args: argparse.Namespace, read: Callable[[str], str] = input) -> int:
    if not 1 <= args.candidates <= 4:
        print("--candidates must be 1-4", file=sys.stderr)
        return 2
    history: list[dict[str, str]] = []
    with AssistantClient(args.server, token=args.token) as client:
        print(f"chatting as {args.user}; an empty line or Ctrl-D quits")
        while True:
            text = _ask("you> ", read)
            if not text:
                return 0
            history.append({"role": "user", "content": text})
            turn = _single if args.candidates == 1 else _ranked
            try:
                reply = turn(client, args, history, read)
            except grpc.RpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})


def status(args: argparse.Namespace) -> int:
    with AssistantClient(args.server, token=args.token) as client:
        print(client.status(args.user))
    return 0


def admin(args: argparse.Namespace) -> int:
    """One lifecycle operation; prints the server's answer."""
    with AssistantClient(args.server, token=args.token) as client:
        if args.operation == "versions":
            print(client.list_versions(args.user))
        elif args.operation in ("rollback", "pin"):
            print(getattr(client, args.operation)(args.user, args.version))
        else:
            print(getattr(client, args.operation)(args.user))
    return 0


def erase(args: argparse.Namespace) -> int:
    """Erase the user; refuses without --yes (it cannot be undone)."""
    if not args.yes:
        print(f"error: erasing {args.user!r} deletes their adapters and training data for "
              "good; add --yes to confirm", file=sys.stderr)
        return 2
    with AssistantClient(args.server, token=args.token) as client:
        print(client.erase(args.user))
    return 0


def token(args: argparse.Namespace) -> int:
    """Print a token signed with the server's secret (PERSONALIZE_SERVER_AUTH_*)."""
    from services.contract import config as config_mod
    from services.contract.auth import AuthConfig, Authenticator
    from services.contract.errors import InvalidArgument

    cfg = config_mod.load(AuthConfig, "server_auth", args)
    try:
        print(Authenticator(cfg).issue(args.user, args.ttl, admin=args.admin))
    except (ValueError, OSError, InvalidArgument) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", required=True)
    p.add_argument("--server", default="127.0.0.1:50051",
                   help="server address, or several comma-separated (calls are spread "
                   "over them)")
    p.add_argument("--token", default=os.environ.get("PERSONALIZE_TOKEN") or None,
                   help="bearer token (default: $PERSONALIZE_TOKEN)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="personalize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("chat", help="chat and give feedback")
    _client_flags(c)
    c.add_argument("--candidates", type=int, default=1, help="1 = thumbs, 2-4 = ranking")
    c.add_argument("--max-tokens", type=int, default=0)
    c.add_argument("--temperature", type=float, default=None)
    s = sub.add_parser("status", help="what the service knows about a user")
    _client_flags(s)
    t = sub.add_parser("token", help="issue a bearer token for a user",
                       description="Sign a token with the server's secret, read from "
                       "PERSONALIZE_SERVER_AUTH_SECRETS / _SECRETS_FILE or --secrets-file.")
    t.add_argument("--user", required=True, help="the token's subject (a user id)")
    t.add_argument("--ttl", type=float, default=86400.0, help="seconds it stays valid")
    t.add_argument("--admin", action="store_true",
                   help="operator token: may act for any user")
    t.add_argument("--secrets-file", dest="cfg__secrets_file", default=None,
                   help="file holding the secrets (first signs)")
    a = sub.add_parser("admin", help="lifecycle operations on a user (admin token)")
    ops = a.add_subparsers(dest="operation", required=True)
    for name, what in (("versions", "list the user's versions with their manifests"),
                       ("rollback", "serve an earlier version's weights again"),
                       ("pin", "pin the user to a version (no automatic publish)"),
                       ("unpin", "lift a pin or a reset"),
                       ("reset", "serve the base model (data kept)")):
        op = ops.add_parser(name, help=what)
        _client_flags(op)
        if name in ("rollback", "pin"):
            op.add_argument("--version", required=True, help="e.g. v3")
    e = sub.add_parser("erase", help="delete a user's adapters and training data (own "
                       "token or admin token)")
    _client_flags(e)
    e.add_argument("--yes", action="store_true", help="confirm: it cannot be undone")
    sub.add_parser("up", help="run the embedded stack (same as personalize-stack)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "up":  # the stack is another program (the `local` extra)
        os.execv(sys.executable, [sys.executable, "-m", "services.devstack.stack", *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "token":
        return token(args)
    try:
        if args.command == "admin":
            return admin(args)
        if args.command == "erase":
            return erase(args)
        return chat(args) if args.command == "chat" else status(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
