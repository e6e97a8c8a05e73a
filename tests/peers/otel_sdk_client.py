"""An application instrumented with the OpenTelemetry Python SDK (urllib instrumentation),
for the test that Sonde keeps the application's own trace context.

Usage: otel_sdk_client.py PORT N [EXPORT_PORT]

Prints "ready", waits for a line on stdin, then makes N GET requests to
http://127.0.0.1:PORT/ok/sdk<i> inside SDK spans (one new trace per request; the urllib
instrumentation injects `traceparent` with its CLIENT span as the parent) and prints one line
per SDK client span: "span <i> <trace id> <span id>". With EXPORT_PORT it then sends its
spans the way an SDK exports them (a protobuf ExportTraceServiceRequest POSTed to
/v1/traces), prints "exported <status>", waits for another line, makes N more requests
(printing "after <i> <status>") and exits.
"""

import sys
import urllib.error
import urllib.request

from opentelemetry import trace
from opentelemetry.instrumentation.urllib import URLLibInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class LineExporter(SpanExporter):
    """Prints each finished CLIENT span's ids (the SDK's own record of the call)."""

    def __init__(self):
        self.index = 0
        self.spans = []

    def export(self, spans):
        for s in spans:
            self.spans.append(s)
            if s.kind == trace.SpanKind.CLIENT:
                ctx = s.get_span_context()
                print(f"span {self.index} {ctx.trace_id:032x} {ctx.span_id:016x}", flush=True)
                self.index += 1
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def otlp_body(spans):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for s in spans:
        ctx = s.get_span_context()
        out = scope.spans.add()
        out.trace_id = ctx.trace_id.to_bytes(16, "big")
        out.span_id = ctx.span_id.to_bytes(8, "big")
        out.name = s.name
        out.kind = trace_pb2.Span.SPAN_KIND_CLIENT
        out.start_time_unix_nano = s.start_time
        out.end_time_unix_nano = s.end_time
    return req.SerializeToString()


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    export_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    exporter = LineExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    URLLibInstrumentor().instrument()
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        get(f"http://127.0.0.1:{port}/ok/sdk{i}")
    if export_port is None:
        return
    URLLibInstrumentor().uninstrument()
    body = otlp_body(exporter.spans)
    req = urllib.request.Request(
        f"http://127.0.0.1:{export_port}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    print(f"exported {status}", flush=True)
    sys.stdin.readline()
    for i in range(n):
        print(f"after {i} {get(f'http://127.0.0.1:{port}/ok/after{i}')}", flush=True)


if __name__ == "__main__":
    main()
