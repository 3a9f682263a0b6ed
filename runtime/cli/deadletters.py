"""``pillion deadletters list|show|replay|purge``: a running sidecar's dead letters, from a shell.

The sidecar is found by app id in the run-dir registry (as ``pillion status`` finds it), or given
by ``--dapr-http-port``; the calls go to its admin API (``runtime/http/admin.py``) with the API
token from ``--api-token-file`` or ``DAPR_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from runtime.cli import status

ADMIN = "/v1.0-alpha1/pillion/deadletters"
TIMEOUT = 60.0  # a replay of many messages takes a while


class CommandError(Exception):
    """One line for the user; exit code 1."""


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("deadletters", help="list, show, replay or purge dead letters")
    actions = parser.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("--app-id", help="the sidecar's app id (found as `pillion status` finds it)")
        sub.add_argument("--dapr-http-port", type=int, help="the sidecar's HTTP port, instead of --app-id")
        sub.add_argument(
            "--api-token-file", type=Path, help="file holding the API token (else DAPR_API_TOKEN)"
        )
        sub.add_argument("--pubsub", default="pubsub", help="the pubsub component (pubsub)")
        return sub

    listing = action("list", "the messages on dead-letter topics")
    listing.add_argument(
        "--topic", help="a dead-letter topic (default: every one the app's subscriptions name)"
    )
    listing.add_argument("--limit", type=int, default=100, help="most messages per topic (100)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    show = action("show", "one message with its CloudEvent")
    show.add_argument("--topic", required=True, help="the dead-letter topic")
    show.add_argument("id", help="the message id, as listed")
    for name, help_text in (
        ("replay", "republish to the original topic, then remove (at-least-once)"),
        ("purge", "delete messages from the dead-letter topic"),
    ):
        changing = action(name, help_text)
        changing.add_argument("--topic", required=True, help="the dead-letter topic")
        changing.add_argument("ids", nargs="*", metavar="ID", help="message ids, as listed")
        changing.add_argument("--all", action="store_true", help="every message on the topic")


def _base_url(args: argparse.Namespace) -> str:
    if args.dapr_http_port is not None:
        return f"http://127.0.0.1:{args.dapr_http_port}"
    if not args.app_id:
        raise CommandError("name the sidecar with --app-id or --dapr-http-port")
    found = [entry for entry in status.running() if entry.app_id == args.app_id]
    if not found:
        raise CommandError(
            f"no sidecar with app id {args.app_id!r} is running (looked in {status.run_dir()})"
        )
    entry = found[0]
    host = "127.0.0.1" if entry.host in ("0.0.0.0", "::", "") else entry.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{entry.http_port}"


def _token(args: argparse.Namespace) -> str | None:
    if args.api_token_file is not None:
        try:
            return args.api_token_file.read_text().strip() or None
        except OSError as exc:
            raise CommandError(f"--api-token-file {args.api_token_file}: {exc.strerror}") from None
    return os.environ.get("DAPR_API_TOKEN") or None


def _call(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the sidecar at {client.base_url}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        if isinstance(answer, dict) and "message" in answer:
            raise CommandError(f"{answer.get('errorCode', response.status_code)}: {answer['message']}")
        raise CommandError(f"the sidecar answered {response.status_code}: {response.text.strip()[:200]}")
    return answer


def _letters_path(args: argparse.Namespace, topic: str) -> str:
    return f"{ADMIN}/{quote(args.pubsub, safe='')}/{quote(topic, safe='')}"


def _dead_letter_topics(client: httpx.Client, pubsub: str) -> list[str]:
    metadata = _call(client, "GET", "/v1.0/metadata")
    found = [
        s.get("deadLetterTopic", "")
        for s in metadata.get("subscriptions", [])
        if s.get("pubsubname") == pubsub and s.get("deadLetterTopic")
    ]
    return list(dict.fromkeys(found))


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ("TOPIC", "ID", "ORIGINAL TOPIC", "TIME", "REASON")
    lines = [list(columns)] + [
        [r["topic"], r["id"], r["originalTopic"], r["time"], r["reason"][:80]] for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _list(client: httpx.Client, args: argparse.Namespace) -> int:
    topics = [args.topic] if args.topic else _dead_letter_topics(client, args.pubsub)
    rows: list[dict[str, Any]] = []
    for topic in topics:
        answer = _call(client, "GET", f"{_letters_path(args, topic)}?limit={args.limit}")
        rows.extend({"topic": topic, **message} for message in answer["messages"])
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_table(rows))
    else:
        where = ", ".join(topics) if topics else "the app's subscriptions name no dead-letter topic"
        print(f"no dead letters ({where})", file=sys.stderr)
    return 0


def _change(client: httpx.Client, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        raise CommandError(f"give message ids or --all to {args.action}")
    body = {"all": True} if args.all else {"ids": args.ids}
    path = f"{_letters_path(args, args.topic)}/{args.action}"
    answer = _call(client, "POST", path, body)
    verb = "replayed" if args.action == "replay" else "purged"
    print(
        f"{len(answer['done'])} {verb}"
        + (f", not found: {' '.join(answer['missing'])}" if answer["missing"] else "")
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
        headers = {"dapr-api-token": token} if token else {}
        with httpx.Client(base_url=_base_url(args), headers=headers, timeout=TIMEOUT) as client:
            if args.action == "list":
                return _list(client, args)
            if args.action == "show":
                answer = _call(
                    client, "GET", f"{_letters_path(args, args.topic)}/messages/{quote(args.id, safe='')}"
                )
                print(json.dumps(answer, indent=2))
                return 0
            return _change(client, args)
    except CommandError as exc:
        print(f"pillion: {exc}", file=sys.stderr)
        return 1
