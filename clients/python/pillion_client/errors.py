"""The one exception type: a non-2xx answer from the sidecar."""

from __future__ import annotations

import json
from typing import Any

import httpx


class DaprError(Exception):
    """The sidecar refused a call. ``status`` is the HTTP status (409 for an ETag mismatch) and
    ``error_code`` daprd's code (``ERR_STATE_SAVE``); the code is empty when the answer was not
    JSON, as for a wrong API token."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        body: bytes = b"",
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.details = details or []
        self.body = body
        self.method = method
        self.path = path

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.status} {self.error_code or 'error'}: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> DaprError:
        body = response.content
        message = body.decode("utf-8", errors="replace").strip()
        error_code = ""
        details: list[dict[str, Any]] = []
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            error_code = str(parsed.get("errorCode") or "")
            message = str(parsed.get("message") or message)
            raw_details = parsed.get("details")
            if isinstance(raw_details, list):
                details = [d for d in raw_details if isinstance(d, dict)]
        return cls(
            response.status_code,
            error_code,
            message or f"sidecar answered {response.status_code}",
            details=details,
            body=body,
            method=response.request.method,
            path=response.request.url.path,
        )
