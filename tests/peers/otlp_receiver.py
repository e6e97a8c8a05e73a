"""A real OTLP receiver for Sonde's end-to-end tests, built on the official protobuf
definitions (`opentelemetry-proto`) and `grpcio`.

It serves TraceService/MetricsService Export over gRPC and POST /v1/traces, /v1/metrics
(protobuf bodies) over HTTP on 127.0.0.1 (gzip-compressed or not), decodes every request, and appends one JSON line per
request to the output file, flattened for easy assertions:

  {"signal": "traces", "transport": "grpc", "headers": {...},
   "spans": [{"trace_id", "span_id", "parent_span_id", "name", "kind", "status_code",
              "start_ns", "end_ns", "attributes": {...}, "resource": {...}, "scope": ...}]}
  {"signal": "metrics", "transport": "http", "headers": {...},
   "points": [{"name", "unit", "temporality", "attributes": {...}, "resource": {...},
               "count", "sum", "bucket_counts", "explicit_bounds"}]}
   (histograms; sums and gauges are points with "kind" "sum"/"gauge", "is_monotonic" and
   one "value" instead of the histogram fields)

Usage: otlp_receiver.py OUT_FILE GRPC_PORT HTTP_PORT [CERT_PEM KEY_PEM]
A port of 0 disables that transport; with a certificate and key both listeners speak TLS.
Prints "ready" once both listeners accept.
"""

import gzip
import json
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

OUT_LOCK = threading.Lock()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def flatten_traces(req):
    spans = []
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "status_code": s.status.code,
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "attributes": attrs(s.attributes),
                        "resource": resource,
                        "scope": ss.scope.name,
                    }
                )
    return {"signal": "traces", "spans": spans}


def flatten_metrics(req):
    points = []
    for rm in req.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind in ("sum", "gauge"):
                    # Sums and gauges (process metrics, flows): one value per point.
                    data = getattr(m, kind)
                    for p in data.data_points:
                        points.append(
                            {
                                "name": m.name,
                                "unit": m.unit,
                                "kind": kind,
                                "temporality": getattr(data, "aggregation_temporality", 0),
                                "is_monotonic": getattr(data, "is_monotonic", False),
                                "attributes": attrs(p.attributes),
                                "resource": resource,
                                "value": p.as_double
                                if p.WhichOneof("value") == "as_double"
                                else p.as_int,
                            }
                        )
                    continue
                if kind != "histogram":
                    continue
                for p in m.histogram.data_points:
                    points.append(
                        {
                            "name": m.name,
                            "unit": m.unit,
                            "temporality": m.histogram.aggregation_temporality,
                            "attributes": attrs(p.attributes),
                            "resource": resource,
                            "count": p.count,
                            "sum": p.sum,
                            "bucket_counts": list(p.bucket_counts),
                            "explicit_bounds": list(p.explicit_bounds),
                        }
                    )
    return {"signal": "metrics", "points": points}


def record(out_path, entry, transport, headers):
    entry["transport"] = transport
    entry["headers"] = headers
    line = json.dumps(entry)
    with OUT_LOCK, open(out_path, "a") as f:
        f.write(line + "\n")


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(self.out, flatten_traces(request), "grpc", dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(self.out, flatten_metrics(request), "grpc", dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def http_handler(out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                record(out, flatten_traces(req), "http", headers)
                reply = trace_service_pb2.ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                req = metrics_service_pb2.ExportMetricsServiceRequest()
                req.ParseFromString(body)
                record(out, flatten_metrics(req), "http", headers)
                reply = metrics_service_pb2.ExportMetricsServiceResponse()
            else:
                self.send_error(404)
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def main():
    out, grpc_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tls = sys.argv[4:6] if len(sys.argv) >= 6 else None
    if grpc_port:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(out), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(out), server)
        if tls:
            cert, key = (open(p, "rb").read() for p in tls)
            creds = grpc.ssl_server_credentials([(key, cert)])
            server.add_secure_port(f"127.0.0.1:{grpc_port}", creds)
        else:
            server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        server.start()
    if http_port:
        httpd = ThreadingHTTPServer(("127.0.0.1", http_port), http_handler(out))
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
