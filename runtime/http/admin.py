"""Pillion's own admin endpoints, under ``/v1.0-alpha1/pillion/`` (docs/dashboard.md).

Dapr has no API for these; they live beside its alpha APIs so that a Configuration's API
allow/deny lists switch them like any other, and the API token guards them like any other.
``pillion dashboard`` and ``pillion deadletters`` are their clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from runtime import errors
from runtime.blocks.deadletters import MAX_LIST, PAGE, DeadLetters
from runtime.errors import malformed
from runtime.http.wire import decode_json, field, json_response, path_param, read_body

if TYPE_CHECKING:
    from runtime.lifecycle.sidecar import Sidecar

PREFIX = "/pillion"
VERSION = "v1.0-alpha1"


def _sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.app.state.sidecar
    return sidecar


def _letters(request: Request) -> DeadLetters:
    return DeadLetters(_sidecar(request).pubsub, path_param(request, "pubsub"), path_param(request, "topic"))


async def components(request: Request) -> Response:
    """Loaded components and those that failed (``ignoreErrors``), with the reason."""
    return json_response({"components": _sidecar(request).component_report()})


async def list_dead_letters(request: Request) -> Response:
    text = request.query_params.get("limit", str(PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST:
        raise malformed(f"limit must be a whole number from 1 to {MAX_LIST}")
    letters = _letters(request)
    found = await letters.listed(int(text))
    return json_response(
        {
            "pubsubname": letters.entry.name,
            "topic": letters.topic,
            "messages": [letter.summary() for letter in found],
        }
    )


async def show_dead_letter(request: Request) -> Response:
    letter = await _letters(request).get(path_param(request, "id"))
    return json_response(letter.detail())


async def _chosen_ids(request: Request) -> list[str] | None:
    """``{"ids": [...]}`` or ``{"all": true}``: an empty body chooses nothing, never everything."""
    body = await read_body(request)
    choice: Any = decode_json(body) if body.strip() else None
    if not isinstance(choice, dict):
        raise malformed('the body must be {"ids": ["..."]} or {"all": true}')
    ids, everything = field(choice, "ids"), field(choice, "all")
    if everything is True and ids is None:
        return None
    if everything not in (None, False) or not isinstance(ids, list) or not ids:
        raise malformed('the body must be {"ids": ["..."]} with at least one id, or {"all": true}')
    if not all(isinstance(i, str) and i for i in ids) or len(ids) > MAX_LIST:
        raise malformed(f"ids must be up to {MAX_LIST} non-empty strings")
    return list(dict.fromkeys(ids))


async def replay_dead_letters(request: Request) -> Response:
    letters = _letters(request)
    outcome = await letters.replay(await _chosen_ids(request))
    if not outcome.error:
        return json_response(outcome.describe())
    # A Dapr-style error that also says which messages had moved before it.
    error = errors.deadletters_replay_failed(outcome.error)
    body = {"errorCode": str(error.code), "message": error.message, **outcome.describe()}
    return json_response(body, status=error.status)


async def purge_dead_letters(request: Request) -> Response:
    letters = _letters(request)
    outcome = await letters.purge(await _chosen_ids(request))
    return json_response(outcome.describe())


def routes() -> list[tuple[str, Any, list[str]]]:
    """(path under /v1.0-alpha1, endpoint, methods)."""
    letters = f"{PREFIX}/deadletters/{{pubsub}}/{{topic}}"
    return [
        (f"{PREFIX}/components", components, ["GET"]),
        (letters, list_dead_letters, ["GET"]),
        (f"{letters}/messages/{{id}}", show_dead_letter, ["GET"]),
        (f"{letters}/replay", replay_dead_letters, ["POST"]),
        (f"{letters}/purge", purge_dead_letters, ["POST"]),
    ]
