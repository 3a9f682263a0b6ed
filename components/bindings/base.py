"""What binding components implement: output operations invoked by the app, input events read
from a source and handed to the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from components.base import Component

INPUT = "input"
OUTPUT = "output"


@dataclass(slots=True)
class InvokeRequest:
    data: bytes
    metadata: dict[str, str]
    operation: str


@dataclass(slots=True)
class InvokeResponse:
    # None: the operation has no answer (the API then says 204).
    data: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class BindingError(Exception):
    """An operation failed; ``response`` is what the component still has to say (bindings.http's
    status code on a non-2xx answer), shown to the caller as daprd shows it."""

    def __init__(self, message: str, response: InvokeResponse | None = None) -> None:
        super().__init__(message)
        self.response = response


@dataclass(slots=True)
class InputEvent:
    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)


# Hands an event to the app; returns the app's answer, raises when the app did not accept it.
EventHandler = Callable[[InputEvent], Awaitable[bytes]]


class Binding(Component, Protocol):
    # The directions the type supports: {"input"}, {"output"} or both.
    directions: ClassVar[frozenset[str]]


class OutputBinding(Binding, Protocol):
    operations: ClassVar[tuple[str, ...]]

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        """Run one operation; raise ``BindingError`` (or any error) when it fails."""
        ...


class InputBinding(Binding, Protocol):
    async def read(self, handler: EventHandler) -> None:
        """Start handing events to ``handler`` and return; events stop at ``stop_reading``."""
        ...

    async def stop_reading(self) -> None: ...
