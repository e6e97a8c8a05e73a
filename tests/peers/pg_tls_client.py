"""A PostgreSQL client over TLS (psycopg2-binary, whose wheel carries its own libpq and
OpenSSL 1.1 as `libssl-<hash>.so.1.1`), for Sonde's database tests.

Usage: pg_tls_client.py PORT N

Prints `ready`, waits for a line on standard input (so a test can select this process by pid
before it connects), then connects with sslmode=require, checks the session is encrypted,
prints `backend PID` (the server process serving it) and waits for another line (so a test can
wait until Sonde attached its probes to that new server process), then runs
N `SELECT %s AS email` statements with a literal e-mail address (interpolated client-side, so
the literal is inside the TLS records) and one failing statement, and prints `done N`.
"""
import sys

import psycopg2

port, n = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                        sslmode="require")
conn.autocommit = True
assert conn.info.ssl_in_use, "the session is not encrypted"
print("backend %d" % conn.info.backend_pid, flush=True)
sys.stdin.readline()
with conn.cursor() as cur:
    for i in range(n):
        cur.execute("SELECT %s AS email", ("tls-secret-%d@example.com" % i,))
        cur.fetchall()
    try:
        cur.execute("SELECT * FROM no_such_table")
    except psycopg2.errors.UndefinedTable:
        pass
conn.close()
print("done %d" % n, flush=True)
