"""An HTTP/1.1 server that answers every request with the exact bytes it received for it
(request line, header block and body) as the response body, on keep-alive connections.

Used by tests/tests/injection.rs to see what reached the server after Sonde's sk_msg program:
a request must come back byte-identical except for one added `traceparent` line.

    python3 echo_request.py PORT [--tls CERT KEY]
Prints "ready" once listening. Requests are framed by Content-Length only (no chunked bodies:
the tests send none). A request that is not HTTP gets its bytes echoed raw and the
connection closed, so a non-HTTP payload can be compared too. With --tls every connection is
TLS (Python's ssl module, with that certificate and key) and the echo is of the decrypted
bytes: what the client's TLS library was given to send, so an HTTPS request can be compared.
"""

import socket
import ssl
import sys
import threading


def read_request(conn, buf):
    """Returns (request bytes, rest) or (None, buf) at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head_end = buf.index(b"\r\n\r\n") + 4
    length = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buf) < head_end + length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    return buf[: head_end + length], buf[head_end + length :]


def serve(conn, tls):
    buf = b""
    try:
        if tls is not None:
            # The handshake runs here, not in the accept loop, so a stalled peer holds up only
            # its own connection; bounded so that it cannot hold this thread for ever.
            conn.settimeout(20)
            conn = tls.wrap_socket(conn, server_side=True)
            conn.settimeout(None)
        first = conn.recv(65536)
        if not first:
            return
        if not first[:1].isalpha():
            # Not HTTP: echo what arrives until the peer stops sending.
            conn.sendall(first)
            conn.settimeout(0.5)
            try:
                while True:
                    more = conn.recv(65536)
                    if not more:
                        break
                    conn.sendall(more)
            except socket.timeout:
                pass
            return
        buf = first
        while True:
            req, buf = read_request(conn, buf)
            if req is None:
                return
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: " + str(len(req)).encode() + b"\r\n\r\n"
            )
            conn.sendall(head + req)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    port = int(sys.argv[1])
    tls = None
    if sys.argv[2:3] == ["--tls"]:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[3], sys.argv[4])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(512)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn, tls), daemon=True).start()


if __name__ == "__main__":
    main()
