"""Client for Sonde's service graph test: calls an instrumented server and an uninstrumented
peer, a new connection per request (urllib), once told to.

Usage: graph_client.py BACK_PORT PEER_PORT N K M
  prints `ready`, waits for a line on stdin, then sends N GETs to 127.0.0.1:BACK_PORT (the
  first K to /error/<i>, answered 500; the rest to /ok/<i>) and M GETs to
  127.0.0.1:PEER_PORT /ok/<i>; prints `done <statuses>` (status:count, sorted) and waits
  for stdin to close, so the process stays known to Sonde while the test reads the metrics.
"""
import collections
import sys
import urllib.error
import urllib.request


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def main():
    back, peer, n, k, m = (int(a) for a in sys.argv[1:6])
    print("ready", flush=True)
    sys.stdin.readline()
    seen = collections.Counter()
    for i in range(n):
        seen["back:%d" % get(back, ("/error/%d" if i < k else "/ok/%d") % i)] += 1
    for i in range(m):
        seen["peer:%d" % get(peer, "/ok/%d" % i)] += 1
    print("done " + " ".join("%s=%d" % kv for kv in sorted(seen.items())), flush=True)
    sys.stdin.read()


main()
