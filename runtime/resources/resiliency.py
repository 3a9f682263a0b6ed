"""``kind: Resiliency`` resources: timeouts, retries and circuit breakers for app and component targets.

Read from the resources paths (several resources merge; ``scopes`` limit which app ids load one).
A :class:`Policy` runs one operation under its target's timeout (per attempt), retries and breaker.
The format and defaults are daprd's; docs/resiliency.md describes them and Pillion's choices.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from components.metadata import parse_duration
from runtime.delivery.subscriptions import compile_match
from runtime.resources.loader import API_VERSION, ResourceError, _documents, _resource_files

log = logging.getLogger("pillion.resiliency")
T = TypeVar("T")
# Exponential backoff as daprd's retry library sets it (not configurable there either).
_EXP_INITIAL = 0.5
_EXP_MULTIPLIER = 1.5
_EXP_RANDOMIZATION = 0.5
_EXP_MAX_ELAPSED = 15 * 60.0


class CircuitOpen(Exception):
    """The breaker is open (or half-open and already trying): the call was not made."""

    def __init__(self, message: str = "circuit breaker is open") -> None:
        super().__init__(message)


class Failure(Exception):
    """An attempt whose result counts as failed (an app's 5xx): carries the result for the end."""

    def __init__(self, result: Any, code: int) -> None:
        super().__init__(f"status {code}")
        self.result = result
        self.code = code


@dataclass(frozen=True)
class Retry:
    policy: str = "constant"
    duration: float = 5.0
    max_interval: float = 60.0
    max_retries: int = -1
    http_codes: frozenset[int] = frozenset()

    def delays(self) -> Iterable[float]:
        """The waits before each retry; ends when no retry is left."""
        count = 0
        started = time.monotonic()
        interval = _EXP_INITIAL
        while self.max_retries < 0 or count < self.max_retries:
            count += 1
            if self.policy == "exponential":
                if time.monotonic() - started > _EXP_MAX_ELAPSED:
                    return
                spread = interval * _EXP_RANDOMIZATION
                yield min(random.uniform(interval - spread, interval + spread), self.max_interval)
                interval = min(interval * _EXP_MULTIPLIER, self.max_interval)
            else:
                yield self.duration

    def retries_code(self, code: int) -> bool:
        return not self.http_codes or code in self.http_codes


@dataclass
class Breaker:
    """A circuit breaker as daprd's: closed -> open when ``trip`` is true, half-open after
    ``timeout``, closed again after ``max_requests`` successes."""

    name: str
    trip: Any  # compiled CEL
    interval: float = 0.0
    timeout: float = 60.0
    max_requests: int = 1
    state: str = "closed"
    counts: dict[str, int] = field(default_factory=dict)
    _opened_at: float = 0.0
    _window_start: float = 0.0
    _half_open_inflight: int = 0

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.counts = dict.fromkeys(
            ("requests", "totalSuccesses", "totalFailures", "consecutiveSuccesses", "consecutiveFailures"), 0
        )
        self._window_start = time.monotonic()

    def before(self) -> None:
        now = time.monotonic()
        if self.state == "open":
            if now - self._opened_at < self.timeout:
                raise CircuitOpen()
            self.state = "half-open"
            self._reset()
        if self.state == "half-open":
            if self._half_open_inflight >= self.max_requests:
                raise CircuitOpen("too many requests")
            self._half_open_inflight += 1
        elif self.interval > 0 and now - self._window_start >= self.interval:
            self._reset()
        self.counts["requests"] += 1

    def after(self, ok: bool) -> None:
        c = self.counts
        if self.state == "half-open":
            self._half_open_inflight -= 1
        if ok:
            c["totalSuccesses"] += 1
            c["consecutiveSuccesses"] += 1
            c["consecutiveFailures"] = 0
            if self.state == "half-open" and c["consecutiveSuccesses"] >= self.max_requests:
                log.info("circuit breaker %s closed", self.name)
                self.state = "closed"
                self._reset()
            return
        c["totalFailures"] += 1
        c["consecutiveFailures"] += 1
        c["consecutiveSuccesses"] = 0
        if self.state == "half-open" or self._tripped():
            if self.state != "open":
                log.warning("circuit breaker %s opened", self.name)
            self.state = "open"
            self._opened_at = time.monotonic()

    def _tripped(self) -> bool:
        try:
            return self.trip.execute(dict(self.counts)) is True
        except Exception:
            return False  # as daprd: an expression that fails to evaluate does not trip


@dataclass
class Policy:
    timeout: float | None = None
    retry: Retry | None = None
    breaker: Breaker | None = None

    @property
    def retries(self) -> bool:
        return self.retry is not None and self.retry.max_retries != 0

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        failed_code: Callable[[T], int | None] | None = None,
        discard: Callable[[T], Awaitable[None]] | None = None,
        permanent: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Run ``operation`` under the policy. ``failed_code`` says whether a result is a failure
        (its status code) to retry; the last result is returned even when it failed."""
        delays = iter(self.retry.delays()) if self.retry is not None else iter(())
        while True:
            if self.breaker is not None:
                self.breaker.before()
            try:
                result = await self._attempt(operation)
            except (CircuitOpen, asyncio.CancelledError):
                raise
            except permanent:
                # The call was made and answered (an ETag mismatch, ...): final, and no failure
                # of the target.
                if self.breaker is not None:
                    self.breaker.after(True)
                raise
            except Exception as exc:
                if self.breaker is not None:
                    self.breaker.after(False)
                delay = next(delays, None)
                if delay is None:
                    raise
                log.debug("retrying in %.2fs after %r", delay, exc)
                await asyncio.sleep(delay)
                continue
            code = failed_code(result) if failed_code is not None else None
            if self.breaker is not None:
                self.breaker.after(code is None)
            if code is None:
                return result
            retry = self.retry
            delay = next(delays, None) if retry is not None and retry.retries_code(code) else None
            if delay is None:
                return result
            if discard is not None:
                await discard(result)
            await asyncio.sleep(delay)

    def delivery_settings(self) -> dict[str, Any]:
        """This policy as pub/sub delivery settings (runtime/delivery/handler.py), for an inbound target."""
        settings: dict[str, Any] = {}
        if self.timeout is not None:
            settings["deliveryTimeout"] = self.timeout
        retry = self.retry
        if retry is not None:
            settings["deliveryMaxAttempts"] = -1 if retry.max_retries < 0 else retry.max_retries + 1
            if retry.policy == "constant":
                settings["deliveryRetryInterval"] = settings["deliveryMaxRetryInterval"] = retry.duration
            else:
                settings["deliveryRetryInterval"] = _EXP_INITIAL
                settings["deliveryMaxRetryInterval"] = retry.max_interval
        return settings

    async def _attempt(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self.timeout is None:
            return await operation()
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await operation()
        except TimeoutError:
            if not deadline.expired():
                raise  # the operation's own timeout, with its own message
            # daprd's policy ends the call's context: the error is the context's.
            raise TimeoutError("context deadline exceeded") from None


@dataclass
class Resiliency:
    names: list[str] = field(default_factory=list)
    timeouts: dict[str, float] = field(default_factory=dict)
    retries: dict[str, Retry] = field(default_factory=dict)
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    components: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _policies: dict[str, Policy | None] = field(default_factory=dict)

    def _policy(self, key: str, target: dict[str, Any], level: str) -> Policy | None:
        if key in self._policies:
            return self._policies[key]
        timeout_name = target.get("timeout") or f"Default{level}TimeoutPolicy"
        retry_name = target.get("retry") or f"Default{level}RetryPolicy"
        breaker_name = target.get("circuitBreaker") or f"Default{level}CircuitBreakerPolicy"
        timeout = self.timeouts.get(timeout_name, self.timeouts.get("DefaultTimeoutPolicy"))
        retry = self.retries.get(retry_name, self.retries.get("DefaultRetryPolicy"))
        spec = self.breakers.get(breaker_name, self.breakers.get("DefaultCircuitBreakerPolicy"))
        breaker = Breaker(name=key, **spec) if spec is not None else None
        policy = Policy(timeout, retry, breaker) if (timeout or retry or breaker) else None
        self._policies[key] = policy
        return policy

    def for_app(self, app_id: str) -> Policy | None:
        """The policy for invocations of ``app_id`` (as written in the call), or None: then the
        built-in retries apply."""
        target = self.apps.get(app_id)
        if target is None and not any(
            n.startswith("DefaultApp") or n in ("DefaultRetryPolicy", "DefaultTimeoutPolicy")
            for n in (*self.timeouts, *self.retries, *self.breakers)
        ):
            return None
        return self._policy(f"app:{app_id}", target or {}, "App")

    def for_component(self, name: str, direction: str, kind: str) -> Policy | None:
        """``direction`` is outbound or inbound; ``kind`` Statestore, Pubsub, ..."""
        target = self.components.get(name, {}).get(direction, {})
        level = f"{kind}Component{direction.capitalize()}"
        policy = self._policy(f"component:{name}:{direction}", target, level)
        return policy


class _Reader:
    def __init__(self, file: Path, name: str) -> None:
        self.file, self.name = file, name

    def error(self, where: str, problem: str) -> ResourceError:
        return ResourceError(self.file, None, f"resiliency {self.name!r}: {where}: {problem}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, "must be a mapping")
        return value

    def duration(self, value: Any, where: str, bare_unit: float = 0.001) -> float:
        try:
            return parse_duration(str(value), bare_unit)
        except ValueError as exc:
            raise self.error(where, str(exc)) from None

    def codes(self, text: Any, where: str) -> frozenset[int]:
        found: set[int] = set()
        for item in str(text or "").split(","):
            part = item.strip()
            if not part:
                continue
            low, _, high = part.partition("-")
            try:
                first, last = int(low), int(high or low)
            except ValueError:
                raise self.error(where, f"{part!r} is not a status code or range") from None
            if not 100 <= first <= last <= 599:
                raise self.error(where, f"{part!r} is outside 100-599")
            found.update(range(first, last + 1))
        return frozenset(found)

    def retry(self, spec: dict[str, Any], where: str) -> Retry:
        policy = str(spec.get("policy") or "constant").lower()
        if policy not in ("constant", "exponential"):
            raise self.error(f"{where}.policy", f"{policy!r} is not constant or exponential")
        matching = self.mapping(spec.get("matching"), f"{where}.matching")
        return Retry(
            policy=policy,
            duration=self.duration(spec.get("duration", "5s"), f"{where}.duration"),
            max_interval=self.duration(spec.get("maxInterval", "60s"), f"{where}.maxInterval"),
            max_retries=int(spec.get("maxRetries", -1)),
            http_codes=self.codes(matching.get("httpStatusCodes"), f"{where}.matching.httpStatusCodes"),
        )

    def breaker(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        trip = str(spec.get("trip") or "consecutiveFailures > 5")
        try:
            program = compile_match(trip)
        except ValueError as exc:
            raise self.error(f"{where}.trip", f"{trip!r} does not compile: {exc}") from None
        timeout = self.duration(spec.get("timeout", "60s"), f"{where}.timeout")
        return {
            "trip": program,
            "interval": self.duration(spec.get("interval", "0s"), f"{where}.interval"),
            "timeout": timeout or 60.0,
            "max_requests": max(int(spec.get("maxRequests", 1)), 1),
        }


def load_resiliency(paths: Iterable[Path], app_id: str) -> Resiliency | None:
    """Every Resiliency resource for ``app_id`` merged; None when there is none."""
    merged = Resiliency()
    found = False
    for file in _resource_files(paths):
        for doc in _documents(file):
            if doc.get("kind") != "Resiliency" or doc.get("apiVersion") != API_VERSION:
                continue
            scopes = doc.get("scopes") or []
            if scopes and app_id not in scopes:
                continue
            meta = doc.get("metadata") or {}
            reader = _Reader(file, str(meta.get("name") or ""))
            spec = reader.mapping(doc.get("spec"), "spec")
            policies = reader.mapping(spec.get("policies"), "spec.policies")
            for name, value in reader.mapping(policies.get("timeouts"), "spec.policies.timeouts").items():
                merged.timeouts[name] = reader.duration(value, f"spec.policies.timeouts.{name}")
            for name, value in reader.mapping(policies.get("retries"), "spec.policies.retries").items():
                where = f"spec.policies.retries.{name}"
                merged.retries[name] = reader.retry(reader.mapping(value, where), where)
            breakers = reader.mapping(policies.get("circuitBreakers"), "spec.policies.circuitBreakers")
            for name, value in breakers.items():
                where = f"spec.policies.circuitBreakers.{name}"
                merged.breakers[name] = reader.breaker(reader.mapping(value, where), where)
            targets = reader.mapping(spec.get("targets"), "spec.targets")
            for name, value in reader.mapping(targets.get("apps"), "spec.targets.apps").items():
                merged.apps[str(name)] = reader.mapping(value, f"spec.targets.apps.{name}")
            for name, value in reader.mapping(targets.get("components"), "spec.targets.components").items():
                where = f"spec.targets.components.{name}"
                directions = reader.mapping(value, where)
                merged.components[str(name)] = {
                    d: reader.mapping(directions.get(d), f"{where}.{d}") for d in ("inbound", "outbound")
                }
            merged.names.append(reader.name)
            found = True
    return merged if found else None
