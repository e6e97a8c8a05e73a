"""HTTPS test client (http.client over the `ssl` module, so libssl.so.3), verifying the server
against a test CA.

Usage: https_client.py PORT CA [--host HOST] [--wait] [--raw-tls N]
                       [--keepalive REQ[,REQ...]] [--new REQ[,REQ...]]
                       [--conns K --requests R]
  REQ is METHOD:PATH[:BODYLEN] (a POST sends BODYLEN bytes, 0 by default).
  --wait: read a line from stdin before connecting (so an instrumenting agent can select this
    process first).
  The phases run in this order, each only if asked for:
  --raw-tls N: one TLS connection that sends N pseudo-random bytes (not HTTP; the first is 0),
    then reads until N bytes came back (an echo server), the peer closed, or 3 s passed.
  --keepalive: the requests in order on one keep-alive connection.
  --new: each request on a new connection (`Connection: close`).
  --conns K --requests R: K threads, each with its own keep-alive connection, each sending R
    GETs /c<k>/r<i> (i = 0..R-1) in lock step with the others (a barrier before each round), so
    the requests of the K connections interleave.
Prints one JSON line:
  {"statuses": [..], "ports": [..], "echo_ok": true, "raw_received": N,
   "conns": {"/c0": {"port": P, "statuses": [..]}, ...}}
  where `statuses` and `ports` (the client's local port for each request) follow the order of
  --keepalive then --new, `echo_ok` says every POST /echo answered with its body (or, from
  nginx, its length), and `conns` is there with --conns.
"""
import argparse
import http.client
import json
import socket
import ssl
import sys
import threading


def parse_req(spec):
    parts = spec.split(":")
    method, path = parts[0], parts[1]
    n = int(parts[2]) if len(parts) > 2 else 0
    body = bytes((i * 7 + 1) % 251 for i in range(n)) if method == "POST" else None
    return method, path, body


def noise(n):
    x = 0x9E3779B97F4A7C15
    out = bytearray()
    mask = (1 << 64) - 1
    for _ in range(n):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        out.append(x & 0xFF)
    if out:
        out[0] = 0
    return bytes(out)


class Client:
    def __init__(self, host, port, ctx):
        self.host, self.port, self.ctx = host, port, ctx
        self.echo_ok = True

    def connect(self):
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=20)
        conn.connect()
        return conn

    def request(self, conn, method, path, body, close=False):
        headers = {"Connection": "close"} if close else {}
        conn.request(method, path, body=body, headers=headers)
        # The port the request really went out on: http.client reconnects by itself when the
        # server closed the previous connection (nginx does after some error statuses).
        self.last_port = conn.sock.getsockname()[1]
        resp = conn.getresponse()
        data = resp.read()
        if method == "POST" and path == "/echo":
            if data != body and data.strip() != str(len(body)).encode():
                self.echo_ok = False
        return resp.status

    def raw_tls(self, n):
        payload = noise(n)
        got = 0
        with socket.create_connection((self.host, self.port), timeout=3) as raw:
            with self.ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                tls.sendall(payload)
                try:
                    while got < n:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        got += len(chunk)
                except (socket.timeout, ssl.SSLError, OSError):
                    pass
        return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("ca")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--wait", action="store_true")
    ap.add_argument("--raw-tls", type=int, default=0)
    ap.add_argument("--keepalive", default="")
    ap.add_argument("--new", default="")
    ap.add_argument("--conns", type=int, default=0)
    ap.add_argument("--requests", type=int, default=0)
    a = ap.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    if a.wait:
        sys.stdin.readline()
    c = Client(a.host, a.port, ctx)
    out = {"statuses": [], "ports": []}

    if a.raw_tls:
        out["raw_received"] = c.raw_tls(a.raw_tls)

    if a.keepalive:
        conn = c.connect()
        for spec in a.keepalive.split(","):
            out["statuses"].append(c.request(conn, *parse_req(spec)))
            out["ports"].append(c.last_port)
        conn.close()

    for spec in filter(None, a.new.split(",")):
        conn = c.connect()
        out["ports"].append(conn.sock.getsockname()[1])
        out["statuses"].append(c.request(conn, *parse_req(spec), close=True))
        conn.close()

    if a.conns:
        barrier = threading.Barrier(a.conns)
        conns = {}
        errors = []

        def worker(k):
            try:
                conn = c.connect()
                statuses = []
                conns["/c%d" % k] = {"port": conn.sock.getsockname()[1], "statuses": statuses}
                for i in range(a.requests):
                    barrier.wait(timeout=30)
                    statuses.append(c.request(conn, "GET", "/c%d/r%d" % (k, i), None))
                conn.close()
            except Exception as e:  # reported, and the barrier released for the others
                errors.append("/c%d: %r" % (k, e))
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["conns"] = conns
        if errors:
            out["errors"] = errors

    out["echo_ok"] = c.echo_ok
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
