"""Kafka clients for the end-to-end tests (kafka-python 2.0.2 and raw protocol requests).

Usage: kafka_client.py MODE BOOTSTRAP TOPIC [N]

Prints `ready`, then waits for a line on standard input before it connects, so that a test can
select this process by pid first and see every connection from its start. Then:
  produce   sends N records (one flush each) with acks=1, prints `sent N`.
  consume   reads partition 0 of TOPIC from the beginning until N records arrived, prints
            `received N`.
  raw       sends one Produce v3 request (acks=1) for TOPIC over a plain socket, prints
            `produce_error CODE`; then a Metadata v1 request for TOPIC, prints
            `metadata_error CODE`.
  create    creates TOPIC (1 partition) through the admin API, prints `created`.
Record values contain the marker `sonde-secret-payload`, which must never reach any output.
"""

import socket
import struct
import sys

MARKER = b"sonde-secret-payload"


def wait_go():
    print("ready", flush=True)
    sys.stdin.readline()


def produce(bootstrap, topic, n):
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=bootstrap, client_id="sonde-producer", acks=1, linger_ms=0
    )
    for i in range(n):
        p.send(topic, value=MARKER + b"-%d" % i).get(timeout=20)
        p.flush()
    p.close()
    print("sent %d" % n, flush=True)


def consume(bootstrap, topic, n):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="sonde-consumer",
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    c.assign([TopicPartition(topic, 0)])
    got = 0
    for _ in range(100):
        for records in c.poll(timeout_ms=500).values():
            got += len(records)
        if got >= n:
            break
    c.close()
    print("received %d" % got, flush=True)


def create(bootstrap, topic):
    from kafka.admin import KafkaAdminClient, NewTopic

    a = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sonde-admin")
    a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    a.close()
    print("created", flush=True)


def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request(sock, key, version, corr, body):
    msg = struct.pack(">hhi", key, version, corr) + string("sonde-raw") + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    return recv_exact(sock, size)


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("broker closed the connection")
        out += chunk
    return out


def raw(bootstrap, topic):
    host, port = bootstrap.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    # Produce v3: transactional_id null, acks=1, timeout, one topic, partition 0, a record
    # batch (magic 2) with one record.
    record = MARKER
    batch = record_batch(record)
    body = (
        struct.pack(">hhi", -1, 1, 10000)
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">i", 0)
        + struct.pack(">i", len(batch))
        + batch
    )
    resp = request(sock, 0, 3, 1, body)
    # corr, [topic [partition, error_code, ...]]
    _corr, _n = struct.unpack(">ii", resp[:8])
    (name_len,) = struct.unpack(">h", resp[8:10])
    off = 10 + name_len
    _np, _part, code = struct.unpack(">iih", resp[off : off + 10])
    print("produce_error %d" % code, flush=True)
    resp = request(sock, 3, 1, 2, struct.pack(">i", 1) + string(topic))
    # corr, brokers [node, host, port, rack], controller, topics [error, name, ...]
    off = 4
    (nb,) = struct.unpack(">i", resp[off : off + 4])
    off += 4
    for _ in range(nb):
        off += 4
        (hl,) = struct.unpack(">h", resp[off : off + 2])
        off += 2 + hl + 4
        (rl,) = struct.unpack(">h", resp[off : off + 2])
        off += 2 + max(rl, 0)
    off += 4
    (nt,) = struct.unpack(">i", resp[off : off + 4])
    off += 4
    code = struct.unpack(">h", resp[off : off + 2])[0] if nt else 0
    print("metadata_error %d" % code, flush=True)
    sock.close()


def varint(v):
    v = (v << 1) ^ (v >> 63)
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def record_batch(value):
    rec_body = (
        b"\x00"  # attributes
        + varint(0)  # timestamp delta
        + varint(0)  # offset delta
        + varint(-1)  # key: null
        + varint(len(value))
        + value
        + varint(0)  # headers
    )
    rec = varint(len(rec_body)) + rec_body
    after_crc = struct.pack(">hiqqqhii", 0, 0, 0, 0, -1, -1, -1, 1) + rec
    crc = crc32c(after_crc)
    head = struct.pack(">qiib", 0, 4 + 1 + 4 + len(after_crc), 0, 2)
    return head + struct.pack(">I", crc) + after_crc


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def main():
    mode, bootstrap, topic = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    wait_go()
    {
        "produce": lambda: produce(bootstrap, topic, n),
        "consume": lambda: consume(bootstrap, topic, n),
        "raw": lambda: raw(bootstrap, topic),
        "create": lambda: create(bootstrap, topic),
    }[mode]()


if __name__ == "__main__":
    main()
