"""HTTPS test server: Python http.server (threaded, HTTP/1.1 keep-alive) over TLS 1.3 through
the `ssl` module (CPython's `_ssl` links the system's libssl.so.3).

Usage: https_server.py PORT CERT KEY [--echo-port P2]
  Listens on 127.0.0.1:PORT. Prints `ready` once listening (and the echo listener too).
  GET /ok -> 200 "ok\n", GET /missing -> 404, GET /fail -> 500,
  POST /echo -> 201 echoing the request body (Content-Length framed),
  any other GET -> 200 with the path as the body, any other POST -> 404.
  --echo-port P2: also a raw TLS echo listener on 127.0.0.1:P2 in the same process (not HTTP:
  it sends back whatever it reads until the peer closes), for non-HTTP TLS traffic through the
  same libssl.

The TLS handshake runs in each connection's thread (not in the accept loop), so a client that
never completes it cannot stall the server.
"""
import http.server
import socket
import socketserver
import ssl
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections end after this long.
    timeout = 30

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/ok":
            self._send(200, b"ok\n")
        elif path == "/missing":
            self._send(404, b"not found\n")
        elif path == "/fail":
            self._send(500, b"failed\n")
        else:
            self._send(200, path.encode() + b"\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        if self.path.split("?", 1)[0] == "/echo":
            self._send(201, data)
        else:
            self._send(404, b"not found\n")

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Failed handshakes and garbage are expected in tests: stay quiet.
        pass


def tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    return ctx


def echo_server(port, ctx):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def serve(conn):
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
            tls.settimeout(30)
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data)
            tls.close()
        except (OSError, ssl.SSLError):
            conn.close()

    def loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main():
    args = sys.argv[1:]
    echo_port = None
    if "--echo-port" in args:
        i = args.index("--echo-port")
        echo_port = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 3:
        sys.exit("usage: https_server.py PORT CERT KEY [--echo-port P2]")
    port, cert, key = int(args[0]), args[1], args[2]
    ctx = tls_context(cert, key)
    server = Server(("127.0.0.1", port), Handler)
    server.socket = ctx.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    if echo_port:
        echo_server(echo_port, ctx)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
