"""One OpenTelemetry trace per job, across the processes its stages run in.

The ingress's runner opens the job's span; each stage call (a Serve handle call) opens a client span and hands its
context along as a small dict (W3C trace context, and the job id as baggage); the stage replica, and on the gang
each rank's worker actor, open their own spans under it. Every process sets up its exporter from the same
`TracingConfig` (a field of StageConfig, so every stage gets it): none (the default: spans are not recorded),
OTLP over HTTP (a collector, Jaeger, Tempo...), or a file of JSON lines per process (for tests and a quick look).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

JOB_ID = "skyreels.job_id"  # the span attribute (and baggage entry) that names the job
Carrier = dict[str, str]


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exporter: Literal["none", "otlp", "file"] = Field(
        "none", description="Where spans go: nowhere, an OTLP/HTTP endpoint, or JSON lines in file_dir.")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces); default: the "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT environment, else localhost:4318.")
    file_dir: str | None = Field(
        None, description="The file exporter's directory (on every node): spans-<pid>.jsonl per process.")
    service_name: str = Field("skyreels", description="The spans' service.name.")

    @model_validator(mode="after")
    def _file_needs_a_dir(self) -> TracingConfig:
        if self.exporter == "file" and self.file_dir is None:
            raise ValueError("tracing.exporter 'file' needs tracing.file_dir")
        return self


_configured: TracingConfig | None = None


def setup_tracing(config: TracingConfig, process: str) -> None:
    """This process's tracer provider (once per process; `process` names it in the spans' resource)."""
    global _configured
    if config.exporter == "none" or _configured is not None:
        return
    provider = TracerProvider(resource=Resource.create({
        "service.name": config.service_name, "skyreels.process": process, "process.pid": os.getpid()}))
    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint)))
    else:
        Path(config.file_dir).mkdir(parents=True, exist_ok=True)
        # open for the process's life; each span is written as it ends: a process killed later loses none
        out = open(Path(config.file_dir) / f"spans-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=out, formatter=lambda span: span.to_json(indent=None) + "\n")))
    trace.set_tracer_provider(provider)
    _configured = config
    logger.info("tracing: %s spans of %s go to %s", config.service_name, process, config.exporter)


def tracer() -> trace.Tracer:
    return trace.get_tracer("skyreels")


@contextmanager
def job_span(job_id: str, **attributes: str | int) -> Iterator[None]:
    """The root span of one run of a job; stage calls inside it join its trace."""
    token = context.attach(baggage.set_baggage(JOB_ID, job_id))
    try:
        with tracer().start_as_current_span("job", attributes={JOB_ID: job_id, **attributes}):
            yield
    finally:
        context.detach(token)


@contextmanager
def call_span(name: str) -> Iterator[Carrier]:
    """A client span around a call to another process, under the current (job) span; yields the carrier to hand
    the callee. Not made current: it may live in an async generator, resumed in other contexts."""
    job_id = baggage.get_baggage(JOB_ID)
    with _span(name, trace.SpanKind.CLIENT, context.get_current(), {JOB_ID: str(job_id)} if job_id else {}) as carrier:
        yield carrier


@contextmanager
def served_span(name: str, carrier: Carrier | None, **attributes: str | int) -> Iterator[Carrier]:
    """The callee's span, under the caller's (from `carrier`); yields a carrier for the calls it makes."""
    parent = propagate.extract(carrier or {})
    job_id = baggage.get_baggage(JOB_ID, parent)
    with _span(name, trace.SpanKind.SERVER, parent, {**({JOB_ID: str(job_id)} if job_id else {}), **attributes}
               ) as inner:
        yield inner


@contextmanager
def _span(name: str, kind: trace.SpanKind, parent: context.Context, attributes: dict[str, str | int]
          ) -> Iterator[Carrier]:
    span = tracer().start_span(name, context=parent, kind=kind, attributes=attributes)
    carrier: Carrier = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
    try:
        yield carrier
    except BaseException as error:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        span.end()
