"""A small web app that uses PostgreSQL and Redis per request, with their real Python drivers
(psycopg2, redis-py), for Sonde's database tests.

Usage: db_app.py HTTP_PORT PG_PORT REDIS_PORT

GET /order/<n>: one PostgreSQL SELECT and one INSERT (psycopg2 interpolates the parameters
into the statement text client-side, so the literals are on the wire), one Redis SET and one
GET; answers 200 with the row count. Both database connections are opened at start-up, before
any request. Prints `ready` once listening.
"""
import http.server
import sys
import threading

import psycopg2
import redis

http_port, pg_port, redis_port = (int(a) for a in sys.argv[1:4])

pg = psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres")
pg.autocommit = True
with pg.cursor() as cur:
    cur.execute("CREATE TABLE IF NOT EXISTS orders (id int, email text)")
cache = redis.Redis(host="127.0.0.1", port=redis_port)
cache.ping()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if not self.path.startswith("/order/"):
            self.send_error(404)
            return
        n = int(self.path.rsplit("/", 1)[1])
        email = "user%d@example.com" % n
        with lock:
            with pg.cursor() as cur:
                cur.execute("SELECT id FROM orders WHERE email = %s", (email,))
                rows = len(cur.fetchall())
                cur.execute("INSERT INTO orders VALUES (%s, %s)", (n, email))
            cache.set("order:%d" % n, email)
            cache.get("order:%d" % n)
        body = ("%d\n" % rows).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
print("ready", flush=True)
server.serve_forever()
