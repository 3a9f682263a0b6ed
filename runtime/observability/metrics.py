"""The sidecar's Prometheus metrics: one registry per sidecar, and the calls that count.

Building blocks count through a :class:`Metrics` object (``sidecar.metrics``); the collectors live
in the Metrics' own ``CollectorRegistry`` rather than prometheus-client's global one, so two
sidecars in one process (tests, ``pillion run``) never share or clash over series. Every series
carries ``app_id`` so a dashboard fed by several sidecars can tell them apart.

The registry is served by :class:`MetricsServer` on its own loopback port, apart from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("pillion.metrics")
# The text format every Prometheus version reads; the metric names here need nothing newer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# `*_created` series would double every scrape, and the text format gives them no meaning.
# Called through a typed alias: prometheus-client leaves it untyped today, and a later release that
# types it must not turn a `type: ignore` here into an error.
cast("Callable[[], None]", disable_created_metrics)()

# Calls to a local sidecar take well under a millisecond; Prometheus' default buckets start at 5 ms.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An app's handler may do real work (database writes, calls out) before it answers a delivery.
DELIVERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Series:
    __slots__ = ("buckets", "seconds")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.seconds = 0.0


class RequestCollector(Collector):
    """Request counts and latencies, recorded without prometheus-client's per-value locks.

    Every API request is recorded on the event loop, the only writer; a lock per counter and per
    histogram (about 3 microseconds a request on a small machine) buys nothing there. A scrape,
    from another thread, copies the plain numbers it finds; at worst it misses the request being
    recorded at that instant, which the next scrape shows.
    """

    def __init__(self, app_id: str, bounds: tuple[float, ...]) -> None:
        self.app_id = app_id
        self.bounds = bounds
        self._series: dict[tuple[str, str, int], _Series] = {}

    def observe(self, block: str, method: str, status: int, seconds: float) -> None:
        key = (block, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self.bounds) + 1)
        series.buckets[bisect_left(self.bounds, seconds)] += 1
        series.seconds += seconds

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self._series.copy())

    def _families(self, snapshot: dict[tuple[str, str, int], _Series]) -> list[Metric]:
        labels = ["app_id", "block", "method", "status"]
        requests = CounterMetricFamily(
            "pillion_http_server_requests",
            "HTTP API requests, by building block, method and response status.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "pillion_http_server_request_duration_seconds",
            "Time to answer an HTTP API request, by building block, method and response status.",
            labels=labels,
        )
        edges = [*(repr(bound) for bound in self.bounds), "+Inf"]
        for (block, method, status), series in snapshot.items():
            values = [self.app_id, block, method, str(status)]
            cumulative, total = [], 0
            for edge, count in zip(edges, series.buckets.copy(), strict=True):
                total += count
                cumulative.append((edge, float(total)))
            requests.add_metric(values, total)
            latency.add_metric(values, cumulative, series.seconds)
        return [requests, latency]


class Metrics:
    """The counters and histograms of one sidecar.

    HTTP API (counted by ``runtime.http.request_metrics`` for every request):

    * ``pillion_http_server_requests_total{block, method, status}``
    * ``pillion_http_server_request_duration_seconds{block, method, status}`` (histogram)

    Pub/sub (counted by the pub/sub building block and the delivery loop):

    * ``pillion_pubsub_published_total{pubsub, topic}``: messages the broker accepted;
    * ``pillion_pubsub_delivered_total{pubsub, topic}``: deliveries the app acknowledged (SUCCESS);
    * ``pillion_pubsub_retried_total{pubsub, topic}``: failed attempts that will be tried again;
    * ``pillion_pubsub_dead_lettered_total{pubsub, topic}``: messages moved to their dead-letter
      topic (``topic`` is the topic the message came from);
    * ``pillion_pubsub_dropped_total{pubsub, topic}``: messages given up without a dead-letter
      topic (DROP or 404, retries used up, not a CloudEvent);
    * ``pillion_pubsub_delivery_duration_seconds{pubsub, topic}``: one attempt, from sending the
      message to the app until its answer (histogram).

    Components: ``pillion_component_errors_total{component, operation}``, an operation on a
    component that failed (the backend, not the caller's input, was at fault): ``get`` and
    ``bulk_get`` on state and secret stores, ``set``, ``delete``, ``transact`` on state stores,
    ``publish`` on brokers.
    """

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = RequestCollector(app_id, REQUEST_BUCKETS)
        registry.register(self._requests)

        topic_labels = ["app_id", "pubsub", "topic"]
        self._published = Counter(
            "pillion_pubsub_published", "Messages published to a broker.", topic_labels, registry=registry
        )
        self._children: dict[tuple[int, str, str], Any] = {}
        self._delivered = Counter(
            "pillion_pubsub_delivered",
            "Messages delivered to the app and acknowledged by it.",
            topic_labels,
            registry=registry,
        )
        self._retried = Counter(
            "pillion_pubsub_retried",
            "Delivery attempts that failed and will be retried.",
            topic_labels,
            registry=registry,
        )
        self._dead_lettered = Counter(
            "pillion_pubsub_dead_lettered",
            "Messages moved to their dead-letter topic, by the topic they came from.",
            topic_labels,
            registry=registry,
        )
        self._dropped = Counter(
            "pillion_pubsub_dropped",
            "Messages given up without a dead-letter topic to send them to.",
            topic_labels,
            registry=registry,
        )
        self._delivery_seconds = Histogram(
            "pillion_pubsub_delivery_duration_seconds",
            "Time from sending a message to the app until its answer, per attempt.",
            topic_labels,
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self._component_errors = Counter(
            "pillion_component_errors",
            "Component operations that failed in the backend.",
            ["app_id", "component", "operation"],
            registry=registry,
        )

    # --- HTTP API ------------------------------------------------------------------------------

    def observe_request(self, block: str, method: str, status: int, seconds: float) -> None:
        """Called on the event loop only (see :class:`RequestCollector`)."""
        self._requests.observe(block, method, status, seconds)

    # --- pub/sub -------------------------------------------------------------------------------

    def _by_topic(self, metric: Counter | Histogram, pubsub: str, topic: str) -> Any:
        """``metric``'s child for a topic: kept, as these count every message, rather than looked
        up through ``labels()`` (a lock and a tuple of strings) each time."""
        key = (id(metric), pubsub, topic)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.app_id, pubsub, topic)
        return child

    def published(self, pubsub: str, topic: str, count: int = 1) -> None:
        self._by_topic(self._published, pubsub, topic).inc(count)

    def delivered(self, pubsub: str, topic: str) -> None:
        self._by_topic(self._delivered, pubsub, topic).inc()

    def retried(self, pubsub: str, topic: str) -> None:
        self._retried.labels(self.app_id, pubsub, topic).inc()

    def dead_lettered(self, pubsub: str, topic: str) -> None:
        self._dead_lettered.labels(self.app_id, pubsub, topic).inc()

    def dropped(self, pubsub: str, topic: str) -> None:
        self._dropped.labels(self.app_id, pubsub, topic).inc()

    def delivery_latency(self, pubsub: str, topic: str, seconds: float) -> None:
        self._by_topic(self._delivery_seconds, pubsub, topic).observe(seconds)

    # --- components ----------------------------------------------------------------------------

    def component_error(self, component: str, operation: str) -> None:
        self._component_errors.labels(self.app_id, component, operation).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (collecting reads /proc: call it off the loop)."""
        return generate_latest(self.registry)


class InFlightCollector(Collector):
    """``pillion_pubsub_in_flight{pubsub, topic}``: messages of a subscription being delivered to
    the app or waiting for their next try, read from the pub/sub block when scraped."""

    def __init__(self, app_id: str, in_flight: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.app_id = app_id
        self.in_flight = in_flight

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self.in_flight())

    def _families(self, counts: dict[tuple[str, str], int]) -> list[Metric]:
        gauge = GaugeMetricFamily(
            "pillion_pubsub_in_flight",
            "Messages being delivered to the app or waiting to be retried, per subscription.",
            labels=["app_id", "pubsub", "topic"],
        )
        for (pubsub, topic), count in counts.items():
            gauge.add_metric([self.app_id, pubsub, topic], count)
        return [gauge]


class MetricsServer:
    """``GET /metrics`` on its own port.

    A few lines on asyncio rather than prometheus-client's threaded server: that one polls for
    its shutdown flag every half second, which every stop of the sidecar would wait for, and it
    keeps a thread for a port that is scraped a few times a minute. Here an idle server costs
    nothing, stops at once, and the scrape itself (psutil reads /proc) runs in a worker thread so
    the API's event loop is never held up. Prometheus scrapes one request per connection well.
    """

    HEADER_LIMIT = 16 * 1024
    READ_TIMEOUT = 10.0

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; an ``OSError`` (port in use, ...) is the caller's to report."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=self.HEADER_LIMIT, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.READ_TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, content_type, body = "405 Method Not Allowed", "text/plain", b"use GET\n"
            elif path not in (b"/metrics", b"/"):
                status, content_type, body = "404 Not Found", "text/plain", b"see /metrics\n"
            else:
                body = await asyncio.to_thread(self.metrics.exposition)
                status, content_type = "200 OK", CONTENT_TYPE
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode("latin-1") + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that went away or sent no valid request gets nothing
        except Exception:
            log.exception("serving /metrics failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
