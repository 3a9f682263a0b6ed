"""W3C trace context through the sidecar, and optional OpenTelemetry export (OTLP over HTTP).

Every API request but the health probes gets a span of its own: it continues the caller's
``traceparent`` (a new trace when there is none, or it is malformed) and is sent back in the
response's ``traceparent`` header, as daprd does. A publish writes that span into the CloudEvent
(``traceparent``/``traceid``, with the caller's ``tracestate``); the delivery to a subscriber is a
child of it, so one trace id runs from the publisher's request to the subscriber's handler.

Without an exporter (the default) a span is only its ids: no library is loaded and a request costs
one random span id. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
set, or ``spec.tracing.otel.endpointAddress`` in the ``--config`` Configuration, spans are recorded
with the OpenTelemetry SDK and exported in batches from the SDK's own thread (``pip install
'pillion[otel]'``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from runtime.observability.traceparent import child_traceparent

if TYPE_CHECKING:
    from opentelemetry.trace import Span as OTelSpan

log = logging.getLogger("pillion.tracing")

Kind = Literal["server", "producer", "consumer"]
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _same_trace(parent: str | None, child: str) -> bool:
    return parent is not None and parent.strip().lower()[3:35] == child[3:35]


class Span:
    """A span's W3C ids. ``tracestate`` travels only with the trace it belongs to."""

    __slots__ = ("traceparent", "tracestate")

    def __init__(self, traceparent: str, tracestate: str) -> None:
        self.traceparent = traceparent
        self.tracestate = tracestate

    def finish(self, status: int = 0, error: str = "") -> None:
        """Record the end (``status``: the HTTP status seen, 0 when there was none)."""


class Tracer:
    """Ids only: the caller's trace continues, nothing is recorded."""

    exporting = False

    def start(
        self,
        name: str,
        parent: str | None,
        tracestate: str,
        kind: Kind,
        attributes: Mapping[str, str] | None = None,
    ) -> Span:
        traceparent = child_traceparent(parent)
        return Span(traceparent, tracestate if tracestate and _same_trace(parent, traceparent) else "")

    def close(self) -> None:
        """Send what is still buffered (blocking: call it off the event loop)."""


@dataclass(frozen=True)
class TracingSettings:
    """``spec.tracing`` of the Configuration, as far as Pillion uses it."""

    sampling_rate: float | None = None
    endpoint: str = ""
    protocol: str = ""


def exporter_endpoint(settings: TracingSettings) -> str:
    """The OTLP endpoint to export to, or "" when none is configured."""
    if settings.endpoint:
        return settings.endpoint
    return next((os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), "")


def create_tracer(app_id: str, version: str, settings: TracingSettings) -> Tracer:
    """An exporting tracer when an endpoint is configured and the SDK is installed; else ids only."""
    endpoint = exporter_endpoint(settings)
    if not endpoint:
        return Tracer()
    protocol = settings.protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    if protocol and protocol.lower() not in ("http", "http/protobuf"):
        log.warning("OTLP protocol %r is not supported: spans are sent as http/protobuf", protocol)
    try:
        return ExportingTracer(app_id, version, settings)
    except ImportError:
        log.warning(
            "tracing export to %s needs the OpenTelemetry SDK: pip install 'pillion[otel]'; "
            "trace ids are still passed on, but no span is exported",
            endpoint,
        )
        return Tracer()


_SERVER_ERRORS_FROM = 500


class _RecordedSpan(Span):
    __slots__ = ("_kind", "_span")

    def __init__(self, traceparent: str, tracestate: str, span: OTelSpan, kind: Kind) -> None:
        super().__init__(traceparent, tracestate)
        self._span = span
        self._kind = kind

    def finish(self, status: int = 0, error: str = "") -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        if status:
            span.set_attribute("http.response.status_code", status)
        # A server span fails on a 5xx only; a delivery fails on anything the app did not accept.
        failed = bool(error) or (status >= _SERVER_ERRORS_FROM if self._kind == "server" else status >= 300)
        if failed:
            span.set_status(Status(StatusCode.ERROR, error or None))
        span.end()


class ExportingTracer(Tracer):
    """Spans recorded with the OpenTelemetry SDK and exported over OTLP/HTTP in batches.

    Sampling follows daprd: a span is recorded when its parent was sampled, else with probability
    ``samplingRate`` (1 when not configured: whoever sets an endpoint wants to see traces).
    """

    exporting = True

    def __init__(self, app_id: str, version: str, settings: TracingSettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._kinds: dict[Kind, Any] = {
            "server": SpanKind.SERVER,
            "producer": SpanKind.PRODUCER,
            "consumer": SpanKind.CONSUMER,
        }
        rate = 1.0 if settings.sampling_rate is None else settings.sampling_rate
        ratio = TraceIdRatioBased(rate)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": app_id}),
            sampler=ParentBased(ratio, remote_parent_not_sampled=ratio),
        )
        # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT and its other variables itself.
        exporter = OTLPSpanExporter(endpoint=settings.endpoint or None)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("pillion", version)
        self._propagator = TraceContextTextMapPropagator()
        self.endpoint = exporter_endpoint(settings)
        log.info("tracing: spans are exported to %s (sampling rate %g)", self.endpoint, rate)

    def start(
        self,
        name: str,
        parent: str | None,
        tracestate: str,
        kind: Kind,
        attributes: Mapping[str, str] | None = None,
    ) -> Span:
        carrier = {"traceparent": parent, "tracestate": tracestate} if parent else {}
        context = self._propagator.extract(carrier)
        span = self._tracer.start_span(name, context=context, kind=self._kinds[kind], attributes=attributes)
        ids = span.get_span_context()
        # The sampled bit only: older W3C parsers reject the level-2 "random" flag.
        traceparent = f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags) & 1:02x}"
        state = tracestate if tracestate and _same_trace(parent, traceparent) else ""
        return _RecordedSpan(traceparent, state, span, kind)

    def close(self) -> None:
        self._provider.shutdown()
