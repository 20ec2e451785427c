"""OpenTelemetry traces: a span per task run and per step, when an exporter is configured.

``RAYSQUAD_TRACING`` chooses the exporter in every process of the runtime: ``otlp`` (OTLP over
HTTP; ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other standard variables say where), ``console``,
or ``file:/path/spans.jsonl`` (one JSON object per finished span, appended; what the tests read).
Unset, no span is made and nothing is imported.

A submit over HTTP starts a ``submit <workflow>`` span, a child of the caller's ``traceparent``
header when there is one; its context is kept with the task (``TaskRecord.trace_parent``), so the
task's ``task <workflow>`` span in the worker, and the spans of its steps under it, are in the
caller's trace. Every run of a task (a retry, a resume after a crash) is a span of its own.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_tracer: Any = None
_configured: str | None = None


def configure(exporter: str | None) -> None:
    """Set this process's exporter (once; later calls with another value are ignored)."""
    global _tracer, _configured
    if not exporter or _configured is not None:
        return
    with _lock:
        if _configured is not None:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "raysquad"}))
        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif exporter.startswith("file:"):
            provider.add_span_processor(SimpleSpanProcessor(file_exporter(exporter[5:])))
        else:
            raise ValueError(f"RAYSQUAD_TRACING: {exporter!r} is none of otlp, console, file:PATH")
        _tracer = provider.get_tracer("raysquad")
        _configured = exporter


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, parent: str | None = None, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` (nothing when tracing is off); ``parent`` a W3C ``traceparent``
    value, else the current span is the parent."""
    if _tracer is None:
        yield None
        return
    context = None
    if parent:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": parent})
    with _tracer.start_as_current_span(name, context=context,
                                       attributes={k: v for k, v in attributes.items()
                                                   if v is not None}) as current:
        yield current


def current_traceparent() -> str | None:
    """The current span as a ``traceparent`` value (to keep with a task), or None."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def file_exporter(path: str) -> Any:
    """A SpanExporter that appends each finished span as one JSON line (name, trace and span ids,
    parent, times, attributes); many processes may append to one file."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class FileSpanExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            lines = [json.dumps({
                "name": s.name, "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "start": s.start_time, "end": s.end_time, "attributes": dict(s.attributes or {}),
            }) + "\n" for s in spans]
            with open(path, "a") as f:
                f.write("".join(lines))
            return SpanExportResult.SUCCESS

    return FileSpanExporter()
