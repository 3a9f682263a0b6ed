"""Names that brokers derive from component metadata: consumer groups and broker-safe identifiers."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def expand_consumer_id(template: str, app_id: str) -> str:
    """Dapr's ``consumerID``: the app id when empty, with ``{appID}``, ``{uuid}``, ``{podName}`` and
    ``{namespace}`` replaced as daprd replaces them."""
    if not template:
        return app_id
    values = {
        "{appID}": app_id,
        "{uuid}": str(uuid.uuid4()),
        "{podName}": os.environ.get("POD_NAME") or socket.gethostname(),
        "{namespace}": os.environ.get("NAMESPACE", ""),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def safe_name(text: str, limit: int = 120) -> str:
    """``text`` reduced to letters, digits, ``_`` and ``-`` (what NATS consumer and stream names
    allow), with a hash of the original so that two texts never map to one name."""
    cleaned = _UNSAFE.sub("_", text).strip("_")[:limit] or "topic"
    return f"{cleaned}-{short_hash(text, length=6)}"
