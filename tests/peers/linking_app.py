"""Peers for Sonde's in-process linking test (parent and child inside one process).

Usage:
  linking_app.py down PORT                 a downstream HTTP server answering `ok <path>`
  linking_app.py app PORT DOWN_PORT PG_PORT
      a thread-per-connection front (ThreadingHTTPServer): GET /req/<id> calls
      GET /down/<id> on the downstream (urllib, a new connection each time) and runs
      `SELECT <id> AS req` on PostgreSQL (psycopg2, a pool of 16 connections opened at
      start-up), all on the thread serving the request; answers `done <id>`.
      GET /spawn/<id> makes the same two calls on a thread it starts and joins;
      GET /pool/<id> makes the downstream call on a shared 4-thread pool (threads that
      outlive the request that started them).
  linking_app.py relay PORT DOWN_PORT
      a thread-per-connection front whose GET /req/<id> calls GET /down/<id> on the
      downstream on the serving thread; answers `done <id>` (no database).
  linking_app.py client PORT
      a client: for each line `FIRST LAST PARALLEL [TRACEPARENT]` on stdin, GETs /req/<id>
      for every id from FIRST to LAST on PORT, PARALLEL at a time (a new connection each;
      with TRACEPARENT, carrying that header), checks each answer is `done <id>`, and prints
      `done`.
Prints `ready` once listening (or, for the client, once started).
"""
import concurrent.futures
import http.server
import queue
import sys
import threading
import urllib.request


class Answering(http.server.BaseHTTPRequestHandler):
    """A quiet handler with the helpers every mode's handler uses."""

    def request_id(self):
        """The digits at the end of the path (`/req/17` → "17"), else "0"."""
        rid = self.path.rsplit("/", 1)[-1]
        return rid if rid.isdigit() else "0"

    def answer(self, text):
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        # Said, not only done (HTTP/1.0 closes after each answer): java.net.http.HttpClient
        # pools a connection whose answer lacks `Connection: close`, and a request sent on it
        # after the close goes out on the wire unanswered (a second span for one call).
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Down(Answering):
    def do_GET(self):
        self.answer("ok " + self.path)


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def client(port):
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        first, last, parallel = (int(x) for x in words[:3])
        headers = {"traceparent": words[3]} if len(words) > 3 else None

        def one(rid):
            body = get("http://127.0.0.1:%d/req/%d" % (port, rid), headers)
            if body != "done %d" % rid:
                raise RuntimeError("request %d answered %r" % (rid, body))

        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(one, range(first, last + 1)))
        print("done", flush=True)


def relay_handler(down_port):
    class Relay(Answering):
        def do_GET(self):
            rid = self.request_id()
            get("http://127.0.0.1:%d/down/%s" % (down_port, rid))
            self.answer("done " + rid)

    return Relay


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "client":
        client(port)
        return
    if mode == "down":
        handler = Down
    elif mode == "relay":
        handler = relay_handler(int(sys.argv[3]))
    else:
        import psycopg2

        down_port, pg_port = int(sys.argv[3]), int(sys.argv[4])
        pool = queue.Queue()
        for _ in range(16):
            c = psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres",
                                 dbname="postgres")
            c.autocommit = True
            pool.put(c)

        workers = concurrent.futures.ThreadPoolExecutor(max_workers=4)

        def down(path, rid):
            with urllib.request.urlopen(
                    "http://127.0.0.1:%d/%s/%s" % (down_port, path, rid), timeout=10) as r:
                r.read()

        def calls(rid):
            down("down", rid)
            conn = pool.get()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT %s AS req" % int(rid))
                    cur.fetchall()
            finally:
                pool.put(conn)

        class App(Answering):
            def do_GET(self):
                rid = self.request_id()
                if self.path.startswith("/spawn/"):
                    t = threading.Thread(target=calls, args=(rid,))
                    t.start()
                    t.join()
                elif self.path.startswith("/pool/"):
                    workers.submit(down, "pooled", rid).result()
                else:
                    calls(rid)
                self.answer("done " + rid)

        handler = App
    http.server.ThreadingHTTPServer.request_queue_size = 128
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


main()
