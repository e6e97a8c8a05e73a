"""A memcached client for the end-to-end tests, on pymemcache 4.0 (text protocol). Prints
`ready`, waits for a line on stdin, then connects to 127.0.0.1:PORT and runs its plan on one
connection, printing one line per step, then `done`.

`plan PORT N M`:
- N times `set secretkey-i topsecretvalue-i…` (300-byte values; noreply off: each answered
  STORED);
- N times `get secretkey-i` (hits);
- one multi-get of the first five keys and a missing one (one `get` command), then one of
  all N keys (with N = 20, a reply of 6.5 KB written at once: more than capture keeps of a
  syscall);
- a quiet meta batch in one write (`mg` of a key and of a missing one, both with `q`, then
  `mn`): memcached answers the hit and `MN`;
- M times `set` with noreply (pymemcache's default: no reply at all);
- a 100 000-byte value set and read back (larger than what capture keeps of a syscall);
- `incr` of a non-numeric value (CLIENT_ERROR: pymemcache then closes its socket and the
  next command connects again), `delete` of a missing key (NOT_FOUND);
- `version`, then `quit`.
"""

import sys

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

port, n, m = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
assert sys.argv[1] == "plan"

print("ready", flush=True)
sys.stdin.readline()


def value(i):
    return f"topsecretvalue-{i:02}".ljust(300, "v")


c = Client(("127.0.0.1", port), default_noreply=False)
for i in range(n):
    assert c.set(f"secretkey-{i}", value(i), noreply=False)
print("set", n, flush=True)
hits = sum(c.get(f"secretkey-{i}") == value(i).encode() for i in range(n))
print("hits", hits, flush=True)
many = c.get_many([f"secretkey-{i}" for i in range(5)] + ["secretkey-missing"])
print("many", len(many), flush=True)
every = c.get_many([f"secretkey-{i}" for i in range(n)])
print("every", len(every), flush=True)
meta = c.raw_command(b"mg secretkey-1 v q\r\nmg secretkey-missing v q\r\nmn", b"MN\r\n")
print("meta", meta.split(b"\r\n")[0].decode(), flush=True)
for i in range(m):
    c.set(f"secretquiet-{i}", "topsecretquiet", noreply=True)
big = b"B" * 100_000
assert c.set("secretbig", big, noreply=False)
print("big", len(c.get("secretbig") or b""), flush=True)
try:
    c.incr("secretkey-0", 1, noreply=False)
    print("incr ok", flush=True)
except MemcacheClientError as e:
    print("incr error", type(e).__name__, flush=True)
print("delete", c.delete("secretkey-missing", noreply=False), flush=True)
print("version", c.version().decode(), flush=True)
c.quit()
print("done", flush=True)
