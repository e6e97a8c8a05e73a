"""A small web app that uses PostgreSQL, Redis and optionally MariaDB and Kafka per request,
with their real Python drivers (psycopg2, redis-py, PyMySQL, kafka-python), for Sonde's
database and messaging tests.

Usage: db_app.py HTTP_PORT PG_PORT REDIS_PORT [MYSQL_PORT KAFKA_PORT]

GET /order/<n>: one PostgreSQL SELECT and one INSERT (psycopg2 interpolates the parameters
into the statement text client-side, so the literals are on the wire), one Redis SET and one
GET; with MYSQL_PORT and KAFKA_PORT also one MariaDB SELECT (PyMySQL, database `app`, user
root) and one Kafka produce to the topic `orders` (acks=1, waited for); answers 200 with the
row count. Every connection is opened at start-up, before any request. Prints `ready` once
listening.
"""
import http.server
import sys
import threading

import psycopg2
import redis

http_port, pg_port, redis_port = (int(a) for a in sys.argv[1:4])
mysql_port, kafka_port = (int(a) for a in sys.argv[4:6]) if len(sys.argv) > 5 else (None, None)

pg = psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres")
pg.autocommit = True
with pg.cursor() as cur:
    cur.execute("CREATE TABLE IF NOT EXISTS orders (id int, email text)")
cache = redis.Redis(host="127.0.0.1", port=redis_port)
cache.ping()
mysql = producer = None
if mysql_port is not None:
    import kafka
    import kafka.admin
    import kafka.errors
    import pymysql

    mysql = pymysql.connect(host="127.0.0.1", port=mysql_port, user="root", autocommit=True)
    with mysql.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
        cur.execute("CREATE TABLE IF NOT EXISTS app.customers (id int, email text)")
    bootstrap = "127.0.0.1:%d" % kafka_port
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([kafka.admin.NewTopic("orders", 1, 1)])
    except kafka.errors.TopicAlreadyExistsError:
        pass
    admin.close()
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, client_id="db-app", acks=1,
                                   linger_ms=0)
    # The first send fetches metadata (and creates the topic if the broker auto-creates it),
    # so the measured requests each send one Produce.
    producer.send("orders", b"warm-up").get(timeout=30)
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
            if mysql is not None:
                with mysql.cursor() as cur:
                    cur.execute("SELECT id FROM app.customers WHERE email = %s", (email,))
                    cur.fetchall()
                producer.send("orders", email.encode()).get(timeout=30)
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
