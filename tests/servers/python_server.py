"""Test server: Python http.server (threaded, HTTP/1.1 keep-alive).

GET /ok* -> 200, GET /error* -> 500, GET /drop* -> the connection closed without an
answer, other GET -> 404, POST -> 201 "got N".
Usage: python_server.py PORT
"""
import http.server
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/ok"):
            self._send(200, "ok\n")
        elif path.startswith("/error"):
            self._send(500, "error\n")
        elif path.startswith("/drop"):
            self.close_connection = True
        else:
            self._send(404, "not found\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self._send(201, "got %d\n" % len(data))

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
