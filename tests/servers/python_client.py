"""Test client: waits for a line on stdin, then sends the requests given as arguments
(METHOD:PATH[:BODYLEN]) to 127.0.0.1:PORT over one keep-alive connection, printing each status.

Usage: python_client.py PORT GET:/ok POST:/submit:10 ...
"""
import http.client
import sys

port = int(sys.argv[1])
sys.stdin.readline()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for spec in sys.argv[2:]:
    parts = spec.split(":")
    method, path = parts[0], parts[1]
    body = b"x" * int(parts[2]) if len(parts) > 2 else None
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    resp.read()
    print(resp.status, flush=True)
conn.close()
