"""A MySQL/MariaDB client for the end-to-end tests. Prints `ready`, waits for a line on
stdin, then connects to 127.0.0.1:PORT (database `app`, user root, no password), runs its
statements and prints one line per result before it exits.

Modes:
- `pymysql PORT N`: PyMySQL (text protocol; it puts the parameters into the SQL itself):
  N times `SELECT email FROM orders WHERE id = %s`, one INSERT, one SELECT from a missing
  table (error 1146).
- `old PORT N`: PyMySQL, connected before `ready` (a connection older than Sonde): three
  large results (`SELECT REPEAT('x', 1000) AS pad FROM seq_1_to_200`, 200 kB each), then
  N times the SELECT.
- `prepared PORT N`: mysql-connector-python with `cursor(prepared=True)` (server-side
  prepared statements, COM_STMT_PREPARE/EXECUTE): N executes of the same SELECT, one of an
  INSERT, one of an INSERT that fails with a duplicate key (error 1062).
"""

import sys

mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SELECT = "SELECT email FROM orders WHERE id = %s"

if mode == "old":
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1", port=port, user="root", database="app", autocommit=True
    )

print("ready", flush=True)
sys.stdin.readline()

if mode == "pymysql":
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1", port=port, user="root", database="app", autocommit=True
    )
    with conn.cursor() as cur:
        for _ in range(n):
            cur.execute(SELECT, (1,))
            print("row", cur.fetchone()[0], flush=True)
        cur.execute("INSERT INTO orders VALUES (%s, %s)", (100, "carol@example.com"))
        print("inserted", cur.rowcount, flush=True)
        try:
            cur.execute("SELECT * FROM missing_table")
        except pymysql.MySQLError as e:
            print("error", e.args[0], flush=True)
    conn.close()
elif mode == "old":
    with conn.cursor() as cur:
        for _ in range(3):
            cur.execute("SELECT REPEAT('x', 1000) AS pad FROM seq_1_to_200")
            print("rows", len(cur.fetchall()), flush=True)
        for _ in range(n):
            cur.execute(SELECT, (1,))
            print("row", cur.fetchone()[0], flush=True)
    conn.close()
elif mode == "prepared":
    import mysql.connector

    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        database="app",
        ssl_disabled=True,
        autocommit=True,
    )
    cur = conn.cursor(prepared=True)
    for _ in range(n):
        cur.execute(SELECT, (1,))
        print("row", cur.fetchone()[0], flush=True)
    insert = "INSERT INTO orders VALUES (%s, %s)"
    cur.execute(insert, (200, "dave@example.com"))
    print("inserted", cur.rowcount, flush=True)
    try:
        cur.execute(insert, (200, "dave@example.com"))
    except mysql.connector.Error as e:
        print("error", e.errno, flush=True)
    cur.close()
    conn.close()
else:
    sys.exit(f"unknown mode {mode}")
print("done", flush=True)
