"""OpenTelemetry traces: a span per task run and per step, when an exporter is configured.

``RAYSQUAD_TRACING`` chooses the exporter in every process of the runtime: ``otlp`` (OTLP over
HTTP; ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other standard variables say where), ``console``,
or ``file:/path/spans.jsonl`` (one JSON object per finished span, appended; what the tests read).
Unset, no span is made and nothing is imported.

A submit over HTTP starts a ``submit <workflow>`` span, the root of a new trace: the caller is not
trusted to choose the trace (it could join another tenant's, or switch sampling off for its tasks),
so its ``traceparent`` header, once it parses as W3C Trace Context, is recorded as a *link* of the
submit span, and a malformed one is ignored. The submit span's context is kept with the task
(``TaskRecord.trace_parent``), so the task's ``task <workflow>`` span in the worker, and the spans of
its steps under it, are in that trace. Every run of a task (a retry, a resume after a crash) is a
span of its own.
"""

from __future__ import annotations

import contextlib
import json
import re
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


# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; version ff is invalid, and a
# later version may append fields after a dash.
_TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` as a W3C ``traceparent`` of version 00 (a later version cut to 00's fields), or
    None if it is not one (wrong shape, an all-zero trace or span id)."""
    match = _TRACEPARENT.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return f"00-{trace_id}-{span_id}-{flags}"


@contextlib.contextmanager
def span(name: str, parent: str | None = None, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` (nothing when tracing is off); ``parent`` a W3C ``traceparent``
    value of ours (a task's kept context), else the current span is the parent."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    with _tracer.start_as_current_span(name, context=context,
                                       attributes={k: v for k, v in attributes.items()
                                                   if v is not None}) as current:
        yield current


@contextlib.contextmanager
def root_span(name: str, caller: str | None, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` that starts a new trace (nothing when tracing is off), for a request
    from an untrusted caller: its ``traceparent`` (``caller``), if valid, is a link, not the
    parent."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    links = []
    if valid := valid_traceparent(caller):
        linked = get_current_span(TraceContextTextMapPropagator().extract(
            {"traceparent": valid})).get_span_context()
        links.append(Link(linked, {"raysquad.link": "caller"}))
    with _tracer.start_as_current_span(name, context=Context(), links=links,
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
                "links": [{"trace_id": f"{k.context.trace_id:032x}",
                           "span_id": f"{k.context.span_id:016x}"} for k in s.links],
                "start": s.start_time, "end": s.end_time, "attributes": dict(s.attributes or {}),
            }) + "\n" for s in spans]
            with open(path, "a") as f:
                f.write("".join(lines))
            return SpanExportResult.SUCCESS

    return FileSpanExporter()
