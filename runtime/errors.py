"""Errors the API answers with, in daprd's shape: ``{"errorCode", "message", "details"?}``.

Building blocks raise :class:`APIError`; the HTTP layer renders it. The codes, statuses and
``reason`` values follow ../shared/reference/dapr-http-api.md sections 0.5 and 9.
"""

from __future__ import annotations

from typing import Any

DOMAIN = "dapr.io"


class APIError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errorCode": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def error_info(reason: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": DOMAIN,
        "metadata": metadata or {},
        "reason": reason,
    }


def resource_info(resource_type: str, name: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "description": "",
        "owner": "",
        "resource_name": name,
        "resource_type": resource_type,
    }


def bad_request(field: str, description: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "field_violations": [{"field": field, "description": description}],
    }


def help_link(description: str, url: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{"description": description, "url": url}],
    }


def malformed(message: str) -> APIError:
    return APIError(400, "ERR_MALFORMED_REQUEST", message)


def direct_invoke_missing_app_id() -> APIError:
    return APIError(
        404,
        "ERR_DIRECT_INVOKE",
        "failed getting app id either from the URL path or the header dapr-app-id",
    )
