"""``bindings.localstorage``: files under one root folder, as an output binding.

Operations ``create``, ``get``, ``list`` and ``delete`` on the file named by metadata ``fileName``.
Data to ``create`` is read as daprd reads it: a JSON string is unquoted, then text that is valid
base64 is decoded (so ``"aGk="`` writes ``hi``). A ``fileName`` that leads outside ``rootPath``
(``..``, an absolute path, a symbolic link pointing out) is refused, where daprd would instead
clamp it inside the root.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, ClassVar

from components.base import ComponentContext
from components.bindings.base import OUTPUT, BindingError, InvokeRequest, InvokeResponse
from components.metadata import MetadataError, MetadataField, MetadataSchema

_FORBIDDEN_ROOTS = (
    Path("/proc"),
    Path("/sys"),
    Path("/boot"),
    Path("/var/run/secrets"),
    Path("/run/secrets"),
)


class LocalStorageBinding:
    """Output binding reading and writing files under `rootPath`."""

    schema: ClassVar[MetadataSchema] = MetadataSchema(
        (
            MetadataField(
                "rootPath",
                required=True,
                description="Folder holding the files (created if missing); relative to the sidecar's "
                "working directory. System folders (/proc, /sys, /boot, /var/run/secrets) are refused.",
            ),
        )
    )
    directions: ClassVar[frozenset[str]] = frozenset({OUTPUT})
    operations: ClassVar[tuple[str, ...]] = ("create", "get", "list", "delete")

    def __init__(self, metadata: dict[str, Any], context: ComponentContext) -> None:
        root = Path(metadata["rootPath"]).expanduser()
        self._root = Path(os.path.realpath(root if root.is_absolute() else Path.cwd() / root))
        for forbidden in _FORBIDDEN_ROOTS:
            if self._root == forbidden or forbidden in self._root.parents:
                raise MetadataError("rootPath", f"{self._root} is inside {forbidden}, which is refused")

    async def init(self) -> None:
        await asyncio.to_thread(self._root.mkdir, 0o777, True, True)

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        if not self._root.is_dir():
            raise RuntimeError(f"{self._root} is not a folder")

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        name = request.metadata.get("fileName", "")
        operation = request.operation
        if operation == "create":
            return await asyncio.to_thread(self._create, name or str(uuid.uuid4()), request.data)
        if operation == "get":
            if not name:
                raise BindingError("required metadata 'fileName' is missing")
            return await asyncio.to_thread(self._get, name)
        if operation == "list":
            return await asyncio.to_thread(self._list, name)
        if not name:
            raise BindingError("required metadata 'fileName' is missing")
        await asyncio.to_thread(self._delete, name)
        return InvokeResponse()

    def _inside(self, name: str) -> Path:
        """The absolute path of ``name`` under the root, symbolic links resolved; refuses escapes."""
        path = Path(os.path.realpath(self._root / name))
        if path != self._root and self._root not in path.parents:
            raise BindingError(f"fileName {name!r} leads outside rootPath")
        return path

    def _create(self, name: str, data: bytes) -> InvokeResponse:
        if data.startswith(b'"'):
            try:
                text = json.loads(data)
            except ValueError:
                text = None
            if isinstance(text, str):
                data = text.encode()
        with contextlib.suppress(binascii.Error, ValueError):
            data = base64.b64decode(data, validate=True)
        path = self._inside(name)
        if path == self._root:
            raise BindingError(f"fileName {name!r} names rootPath itself")
        try:
            path.parent.mkdir(0o777, parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise BindingError(f"error writing file {path}: {exc.strerror or exc}") from None
        relative = path.relative_to(self._root).as_posix()
        return InvokeResponse(json.dumps({"fileName": relative}, separators=(",", ":")).encode())

    def _get(self, name: str) -> InvokeResponse:
        path = self._inside(name)
        try:
            return InvokeResponse(path.read_bytes())
        except FileNotFoundError:
            raise BindingError(f"file not found: {path}") from None
        except OSError as exc:
            raise BindingError(f"error opening path {path}: {exc.strerror or exc}") from None

    def _list(self, name: str) -> InvokeResponse:
        path = self._inside(name)
        if not path.is_dir():
            raise BindingError(f"unable to list files as the file specified is not a directory: {path}")
        files = sorted(os.path.join(folder, file) for folder, _, names in os.walk(path) for file in names)
        # Go marshals an empty list it never appended to as null.
        return InvokeResponse(json.dumps(files or None, ensure_ascii=False).encode())

    def _delete(self, name: str) -> None:
        path = self._inside(name)
        if path == self._root:
            raise BindingError(f"fileName {name!r} names rootPath itself")
        try:
            path.unlink()
        except FileNotFoundError:
            raise BindingError(f"file not found: {path}") from None
        except OSError as exc:
            raise BindingError(f"error deleting {path}: {exc.strerror or exc}") from None
