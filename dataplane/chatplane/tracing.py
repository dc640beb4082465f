"""Traces and structured logs for every tier.

OpenTelemetry spans are made, and exported over OTLP/gRPC, only when an
endpoint is set (`CHATPLANE_OTLP_ENDPOINT`): with none, nothing is
instrumented and a `span()` is a shared no-op, so a send pays nothing for
tracing. Once set up, the instrumentation libraries trace every gRPC call
between tiers (client and server interceptors, which carry the W3C
`traceparent` in the call metadata) and every Redis command; the storage
backends open a span per SQLite job or CQL request (`db_span`: the
instrumentations for sqlite3 and Cassandra pin another OpenTelemetry
release). A share of requests is traced (`CHATPLANE_TRACE_SAMPLE_RATIO`,
parent-based: a traced request is traced in every tier it crosses); a call
made outside any request (a registry heartbeat) starts no trace.

Log lines are text or one JSON object per line (`--log-format`,
`CHATPLANE_LOG_FORMAT`), with the trace and span ids of the current span.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_instrumentors: list[Any] = []


class RequestRoots(Sampler):
    """Which spans with no parent start a trace: `ratio` of the requests, and no
    client call (a Redis command or gRPC call made outside a request: heartbeats,
    registry refreshes would otherwise make most of the traces)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: Any = None,
                      ) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes,
                                        links, trace_state)

    def get_description(self) -> str:
        return f"RequestRoots{{{self.ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """Parent-based: a span whose caller was traced is traced, one whose caller was
    not is not; a root per RequestRoots."""
    return ParentBased(root=RequestRoots(ratio))


def setup(service: str, endpoint: str = "", exporter: SpanExporter | None = None,
          ratio: float = 1.0) -> bool:
    """Trace this process (once): spans go to the OTLP `endpoint` when set, and to
    `exporter` when given; gRPC and Redis calls are instrumented. False (and nothing
    done) without either, or when already set up."""
    global _provider, _tracer
    if _provider is not None or not (endpoint or exporter is not None):
        return False
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    provider = TracerProvider(resource=Resource.create({"service.name": f"chatplane-{service}"}),
                              sampler=sampler(ratio))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                        insecure=True)))
    # the provider is passed, never made global: a test process sets up and stops again
    for instrumentor in (GrpcAioInstrumentorClient(), GrpcAioInstrumentorServer(),
                         RedisInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)
    _provider, _tracer = provider, provider.get_tracer("chatplane")
    return True


def stop() -> None:
    """Undo `setup`: flush the spans, remove the instrumentation."""
    global _provider, _tracer
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: str | int) -> contextlib.AbstractContextManager[Any]:
    """An internal span under the current one (a no-op when tracing is off)."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


def serving(name: str) -> contextlib.AbstractContextManager[Any]:
    """The handler's span, under the server span the gRPC instrumentation opened with
    the caller's context."""
    return span(name)


def db_span(system: str, operation: str, namespace: str = ""
            ) -> contextlib.AbstractContextManager[Any]:
    """A storage call as a client span with the database semantic conventions; only
    under a traced request (RequestRoots)."""
    if _tracer is None:
        return _NOOP
    attributes = {"db.system.name": system, "db.operation.name": operation}
    if namespace:
        attributes["db.namespace"] = namespace
    return _tracer.start_as_current_span(f"{operation} {namespace or system}",
                                         kind=SpanKind.CLIENT, attributes=attributes)


def carrier() -> str:
    """The current span's W3C traceparent, for a message on a long-lived
    stream (rpc/streams.py), whose call metadata carries only the trace of
    whoever opened it; "" untraced."""
    if _tracer is None:
        return ""
    found: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(found)
    return found.get("traceparent", "")


@contextlib.contextmanager
def _attached(ctx: Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def continued(traceparent: str) -> contextlib.AbstractContextManager[Any]:
    """Work done for a message that carried `carrier()`: under its caller's span."""
    if _tracer is None or not traceparent:
        return _NOOP
    return _attached(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span, hex; ("", "") outside one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str:
    return current_ids()[0]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, and trace_id and
    span_id inside a span, exc with a traceback (the operator's fields too)."""

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
        trace_id, span_id = current_ids()
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, span_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str, fmt: str = "json") -> None:
    """Root logging on stderr at `level`, `fmt` one of LOG_FORMATS (checked by the caller)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if fmt == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
