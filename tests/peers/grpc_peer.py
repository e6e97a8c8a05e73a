"""gRPC test peer (grpcio, no generated code): service `sonde.test.Echo` with raw-bytes messages.

  server --port P [--say-delay-ms MS]
      Cleartext gRPC on 127.0.0.1:P. Prints `ready` once listening.
      Say (unary): answers the request bytes; a request `fail:<CODE_NAME>` (e.g.
        `fail:NOT_FOUND`) aborts with that status code and the message "requested failure".
        Each call is held MS milliseconds (default 100) so concurrent calls overlap.
      Count (server streaming): a request `n,ms` answers n messages, each after ms
        milliseconds (`10,100` lasts ~1 s).
      Every response carries initial metadata `sonde-peer` (the client's address as the
      server saw it: one value per HTTP/2 connection) and `sonde-inflight` (Say calls in
      progress when this one started).

  client --port P [--calls N] [--fail CODE:K[,CODE:K...]] [--stream n,ms] [--wait]
      One channel (one HTTP/2 connection). With --wait, reads a line from stdin before
      connecting (so an instrumenting agent can select the process first). Issues N unary
      Say calls at once (futures), K of them per listed code asking to fail with that code,
      then optionally one Count call. Prints one JSON line, e.g.
      {"Say": {"OK": 40, "NOT_FOUND": 3, "INTERNAL": 2}, "Count": {"OK": 1},
       "count_messages": 10, "connections": 1, "max_inflight": 45}
      where `connections` is the number of distinct client addresses the server reported and
      `max_inflight` the most Say calls the server saw in progress at once.
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "sonde.test.Echo"


def identity(b):
    return b


def serve(port, say_delay_ms):
    lock = threading.Lock()
    inflight = [0]

    def metadata(context, now_inflight):
        context.send_initial_metadata(
            (("sonde-peer", context.peer()), ("sonde-inflight", str(now_inflight)))
        )

    def say(request, context):
        with lock:
            inflight[0] += 1
            now = inflight[0]
        try:
            metadata(context, now)
            if say_delay_ms:
                time.sleep(say_delay_ms / 1000.0)
            if request.startswith(b"fail:"):
                name = request[5:].decode("ascii", "replace").strip()
                code = grpc.StatusCode.__members__.get(name)
                if code is None or code == grpc.StatusCode.OK:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown code " + name)
                context.abort(code, "requested failure")
            return request
        finally:
            with lock:
                inflight[0] -= 1

    def count(request, context):
        try:
            n_text, ms_text = request.decode("ascii").split(",")
            n, ms = int(n_text), int(ms_text)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected n,ms")
        metadata(context, 0)
        for i in range(n):
            time.sleep(ms / 1000.0)
            yield str(i).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(
                say, request_deserializer=identity, response_serializer=identity
            ),
            "Count": grpc.unary_stream_rpc_method_handler(
                count, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    # 64 concurrent calls plus headroom: every call holds a worker thread.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=96))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def run_client(port, calls, fail, stream, wait):
    plan = []
    for item in filter(None, (fail or "").split(",")):
        code, k = item.split(":")
        if code not in grpc.StatusCode.__members__:
            sys.exit(f"unknown status code {code}")
        plan += [f"fail:{code}".encode()] * int(k)
    if len(plan) > calls:
        sys.exit("more failures than calls")
    plan += [f"hello {i}".encode() for i in range(calls - len(plan))]

    if wait:
        sys.stdin.readline()
    result = {"Say": {}, "count_messages": 0}
    peers = set()
    max_inflight = 0

    def note(call):
        nonlocal max_inflight
        for key, value in call.initial_metadata() or ():
            if key == "sonde-peer":
                peers.add(value)
            elif key == "sonde-inflight":
                max_inflight = max(max_inflight, int(value))

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        say = channel.unary_unary(
            f"/{SERVICE}/Say", request_serializer=identity, response_deserializer=identity
        )
        pending = [(req, say.future(req, timeout=30)) for req in plan]
        for req, fut in pending:
            try:
                answer = fut.result()
                if answer != req:
                    sys.exit(f"Say answered {answer!r} to {req!r}")
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if e.details() != "requested failure":
                    sys.exit(f"Say failed unexpectedly: {code} {e.details()}")
            note(fut)
            result["Say"][code] = result["Say"].get(code, 0) + 1
        if stream:
            count = channel.unary_stream(
                f"/{SERVICE}/Count", request_serializer=identity, response_deserializer=identity
            )
            call = count(stream.encode(), timeout=60)
            try:
                for _ in call:
                    result["count_messages"] += 1
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            note(call)
            result["Count"] = {code: 1}
    result["connections"] = len(peers)
    result["max_inflight"] = max_inflight
    print(json.dumps(result, sort_keys=True), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--say-delay-ms", type=int, default=100)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--fail", default="")
    p.add_argument("--stream", default="")
    p.add_argument("--wait", action="store_true")
    a = p.parse_args()
    if a.mode == "server":
        serve(a.port, a.say_delay_ms)
    else:
        run_client(a.port, a.calls, a.fail, a.stream, a.wait)


if __name__ == "__main__":
    main()
