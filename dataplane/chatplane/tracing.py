"""Traces and structured logs for every tier.

OpenTelemetry spans are made, and exported over OTLP/gRPC, only when an
endpoint is set (`CHATPLANE_OTLP_ENDPOINT`): a span costs about 0.1 ms of
CPU, a tenth of a message's path. Log lines carry the trace id when there
is one. The context crosses gRPC hops in the call
metadata (W3C `traceparent`): `outgoing()` gives the metadata for a call,
`serving(name, context)` opens the server span under the caller's span.
Without the opentelemetry packages everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
except ImportError:  # optional dependency
    trace = None  # type: ignore[assignment]

_enabled = False
_tracer: Any = None


def setup(service: str, endpoint: str = "", exporter: Any = None) -> None:
    """Install the tracer provider for this process (once). Spans go to the
    OTLP `endpoint` when set, and to `exporter` (a SpanExporter) when given."""
    global _enabled, _tracer
    if trace is None or _enabled or not (endpoint or exporter is not None):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"chatplane-{service}"}))
    if exporter is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                        insecure=True)))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("chatplane")
    _enabled = True


@contextlib.contextmanager
def span(name: str, **attributes: str | int) -> Iterator[None]:
    if not _enabled:
        yield
        return
    with _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes):
        yield


def outgoing() -> list[tuple[str, str]]:
    """gRPC metadata carrying the current trace context."""
    if not _enabled:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


@contextlib.contextmanager
def serving(name: str, metadata: Sequence[Any] | None) -> Iterator[None]:
    """A server span, child of the caller's span when its metadata carries one."""
    if not _enabled:
        yield
        return
    carrier = {str(m[0]): str(m[1]) for m in (metadata or ())}
    ctx = propagate.extract(carrier)
    with _tracer.start_as_current_span(name, context=ctx, kind=trace.SpanKind.SERVER):
        yield


def current_trace_id() -> str:
    if not _enabled:
        return ""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
