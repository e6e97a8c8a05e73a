"""A client for echo_request.py that sends exact bytes and reports what came back, for
tests/tests/injection.rs. It reads one command per line on stdin and answers with JSON lines,
then `done`:

  requests PORT     one keep-alive connection: a GET, a POST with a body, a GET that already
                    carries traceparent, and a POST whose body (sent in its own write) looks
                    like a request; one {"sent": hex, "echo": hex} line each
  raw PORT          a non-HTTP payload; {"sent": hex, "echo": hex}
  tls PORT CA       HTTPS to echo_request.py --tls (verified against the certificate CA): on
                    one keep-alive connection a GET, a POST with a body, a POST whose body
                    (its own write) looks like a request, a GET that carries traceparent and a
                    GET after them; then a GET on a new connection; one
                    {"sent": hex, "echo": hex, "method": m, "path": p, "port": local port}
                    line each
  nagle PORT N      N sequential requests on one connection without TCP_NODELAY;
                    {"seconds": elapsed}
  hold PORT K       K connections, one request each, kept open until the next command
  load PORT N CONNS DEPTH
                    N requests with bodies over CONNS keep-alive connections, DEPTH requests
                    written at once per connection (pipelining when > 1); every echo is
                    checked: {"ok": n, "corrupt": n, "errors": n, "injected": n}
"""

import json
import re
import socket
# Imported at start, not at the first `tls` command: libssl is then mapped before an agent
# that selects this process looks for it.
import ssl
import sys
import threading
import time

# A request body that is itself a whole request: must never be injected into.
LOOKALIKE = b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n"

TP_LINE = re.compile(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\r\n")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def response_body(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response")
            self.buf += chunk
        end = self.buf.index(b"\r\n\r\n") + 4
        m = re.search(rb"Content-Length: (\d+)", self.buf[:end])
        n = int(m.group(1))
        while len(self.buf) < end + n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a response")
            self.buf += chunk
        body = self.buf[end : end + n]
        self.buf = self.buf[end + n :]
        return body


def requests(port):
    s = connect(port)
    r = Reader(s)
    host = b"Host: 127.0.0.1:%d\r\n" % port
    cases = [
        [b"GET /inject/get HTTP/1.1\r\n" + host + b"Accept: */*\r\n\r\n"],
        [b"POST /inject/post HTTP/1.1\r\n" + host + b"Content-Length: 11\r\n\r\nhello world"],
        [
            b"GET /inject/has-traceparent HTTP/1.1\r\n" + host
            + b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
        ],
        [
            b"POST /inject/body-looks-like-request HTTP/1.1\r\n" + host
            + b"Content-Length: %d\r\n\r\n" % len(LOOKALIKE),
            LOOKALIKE,
        ],
        [b"GET /inject/after-body HTTP/1.1\r\n" + host + b"\r\n"],
    ]
    for parts in cases:
        for p in parts:
            s.sendall(p)
        echo = r.response_body()
        print(json.dumps({"sent": b"".join(parts).hex(), "echo": echo.hex()}), flush=True)
    s.close()


def tls(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    host = b"Host: 127.0.0.1:%d\r\n" % port
    keepalive = [
        [b"GET /tls/get HTTP/1.1\r\n" + host + b"Accept: */*\r\n\r\n"],
        [b"POST /tls/post HTTP/1.1\r\n" + host + b"Content-Length: 11\r\n\r\nhello world"],
        [
            b"POST /tls/body-looks-like-request HTTP/1.1\r\n" + host
            + b"Content-Length: %d\r\n\r\n" % len(LOOKALIKE),
            LOOKALIKE,
        ],
        [
            b"GET /tls/has-traceparent HTTP/1.1\r\n" + host
            + b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
        ],
        [b"GET /tls/after-body HTTP/1.1\r\n" + host + b"\r\n"],
    ]
    fresh = [[b"GET /tls/fresh HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"]]
    for cases in (keepalive, fresh):
        plain = connect(port)
        plain.settimeout(20)
        s = ctx.wrap_socket(plain, server_hostname="127.0.0.1")
        r = Reader(s)
        local = s.getsockname()[1]
        for parts in cases:
            for p in parts:
                s.sendall(p)
            echo = r.response_body()
            method, path = parts[0].split(b" ")[:2]
            print(
                json.dumps(
                    {
                        "sent": b"".join(parts).hex(),
                        "echo": echo.hex(),
                        "method": method.decode(),
                        "path": path.decode(),
                        "port": local,
                    }
                ),
                flush=True,
            )
        s.close()


def raw(port):
    s = connect(port)
    payload = b"\x00\x01not http at all\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    print(json.dumps({"sent": payload.hex(), "echo": got.hex()}), flush=True)


def load(port, n, conns, depth):
    totals = {"ok": 0, "corrupt": 0, "errors": 0, "injected": 0}
    lock = threading.Lock()
    per_conn = n // conns

    def worker(c):
        ok = corrupt = errors = injected = 0
        try:
            s = connect(port)
            r = Reader(s)
            i = 0
            while i < per_conn:
                batch = []
                for k in range(min(depth, per_conn - i)):
                    body = (b"%d-%d-" % (c, i + k)) * (1 + (i + k) % 7)
                    req = (
                        b"POST /load/%d/%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                        % (c, i + k, len(body))
                        + body
                    )
                    batch.append(req)
                s.sendall(b"".join(batch))
                for req in batch:
                    echo = r.response_body()
                    if echo == req:
                        ok += 1
                    else:
                        stripped, count = TP_LINE.subn(b"", echo)
                        if count == 1 and stripped == req:
                            ok += 1
                            injected += 1
                        else:
                            corrupt += 1
                i += len(batch)
            s.close()
        except OSError:
            errors += 1
        with lock:
            totals["ok"] += ok
            totals["corrupt"] += corrupt
            totals["errors"] += errors
            totals["injected"] += injected

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(totals), flush=True)


def nagle(port, n):
    """n sequential requests, one write each, on a connection that keeps Nagle's algorithm on
    (no TCP_NODELAY, as nginx's upstream connections): the elapsed seconds."""
    s = socket.create_connection(("127.0.0.1", port))
    r = Reader(s)
    start = time.monotonic()
    for i in range(n):
        s.sendall(b"GET /nagle/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        r.response_body()
    elapsed = time.monotonic() - start
    s.close()
    print(json.dumps({"seconds": elapsed}), flush=True)


def hold(port, k):
    """Opens k connections (one request each, left open) until the next command."""
    held = []
    for i in range(k):
        s = connect(port)
        s.sendall(b"GET /hold/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        Reader(s).response_body()
        held.append(s)
    print(json.dumps({"held": len(held)}), flush=True)
    return held


def main():
    print("ready", flush=True)
    held = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], [int(w) if w.isdigit() else w for w in words[1:]]
        for s in held:
            s.close()
        held = []
        if cmd == "hold":
            held = hold(*args)
        elif cmd == "requests":
            requests(*args)
        elif cmd == "nagle":
            nagle(*args)
        elif cmd == "tls":
            tls(*args)
        elif cmd == "raw":
            raw(*args)
        elif cmd == "load":
            load(*args)
        elif cmd == "quit":
            break
        print("done", flush=True)


if __name__ == "__main__":
    main()
