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
Prints `ready` once listening.
"""
import concurrent.futures
import http.server
import queue
import sys
import threading
import urllib.request


class Down(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("ok " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "down":
        handler = Down
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

        class App(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rid = self.path.rsplit("/", 1)[-1]
                if not rid.isdigit():
                    rid = "0"
                if self.path.startswith("/spawn/"):
                    t = threading.Thread(target=calls, args=(rid,))
                    t.start()
                    t.join()
                elif self.path.startswith("/pool/"):
                    workers.submit(down, "pooled", rid).result()
                else:
                    calls(rid)
                body = ("done " + rid).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        handler = App
    http.server.ThreadingHTTPServer.request_queue_size = 128
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


main()
