"""A tiny app that keeps a visit counter through its sidecar (standard library only).

It reads DAPR_HTTP_PORT like any Dapr app, so it runs unchanged beside daprd or Pillion.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from email.message import Message

BASE = f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}/v1.0"
STORE = os.environ.get("STATE_STORE", "statestore")


def call(
    method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Message]:
    """One request to the sidecar; header names in the answer are case-insensitive."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def increment(key: str) -> int:
    """Optimistic concurrency: read the value and its ETag, write back only if nobody else did."""
    while True:
        status, body, headers = call("GET", f"/state/{STORE}/{key}")
        current = json.loads(body) if status == 200 else 0
        item: dict[str, object] = {"key": key, "value": current + 1}
        if status == 200:
            item["etag"] = headers["etag"]
        else:
            item["options"] = {"concurrency": "first-write"}
        status, body, _ = call("POST", f"/state/{STORE}", [item])
        if status == 204:
            return current + 1
        if status != 409:
            raise RuntimeError(f"save failed: {status} {body.decode()}")


def main() -> None:
    visits = increment("visits")
    print(f"visit number {visits} (the count survives restarts: the embedded store is SQLite)")
    call(
        "POST",
        f"/state/{STORE}/transaction",
        {
            "operations": [
                {"operation": "upsert", "request": {"key": "last-visit", "value": {"visit": visits}}},
                {
                    "operation": "upsert",
                    "request": {"key": "session", "value": "short-lived", "metadata": {"ttlInSeconds": "60"}},
                },
            ]
        },
    )
    status, body, _ = call("POST", f"/state/{STORE}/bulk", {"keys": ["visits", "last-visit", "missing"]})
    print(f"bulk read ({status}): {body.decode().strip()}")
    status, body, headers = call("GET", f"/state/{STORE}/session")
    print(f"session expires at {headers.get('metadata.ttlExpireTime')}")
    status, body, _ = call("POST", f"/state/{STORE}", [{"key": "bad||key", "value": 1}])
    print(f"a bad key is refused ({status}): {json.loads(body)['errorCode']}")


if __name__ == "__main__":
    main()
