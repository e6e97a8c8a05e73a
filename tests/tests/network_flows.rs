//! Network flow metrics against the kernel's own counts: two network namespaces joined by a
//! veth pair (private test addresses, IPv6 off and static neighbour entries, so the pair
//! carries exactly the test's packets), bounded UDP and TCP transfers between them, and the
//! Prometheus counters Sonde serves compared with what was sent and with the interfaces'
//! statistics.
//!
//! Header accounting (what `beyla_network_flow_bytes_total` counts): IP-layer bytes, IP and
//! transport headers included, link layer not. A UDP datagram of `n` bytes is `n + 8 + 20`
//! (IPv4). A TCP segment with timestamps is its payload + 20 (IP) + 32 (TCP with the
//! timestamp option); the SYN and SYN-ACK carry 8 option bytes more. A GSO/GRO aggregate of
//! `k` segments counts as `k` packets and as the bytes of its `k` segments. Retransmitted
//! segments cross the wire again and count again; each TCP socket's `TCP_INFO`
//! (`tcpi_segs_out`, `tcpi_bytes_sent`) says how many segments and payload bytes it sent,
//! every retransmission included, so TCP is compared exactly with the socket's own figures as
//! well. SACK is off in both namespaces so that every TCP header but the handshake's is 32
//! bytes.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_e2e::{peers::http_get, *};

/// Runs `ip` with `args`, panicking with its error output when it fails.
fn ip(args: &[&str]) -> String {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `a` and `b` joined by the veth pair `veth_a` (10.200.N.1/30, in `a`) –
/// `veth_b` (10.200.N.2/30, in `b`); removed on drop (deleting a namespace deletes its end
/// of the pair, and the pair with it).
struct VethPair {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
    addr_a: String,
    addr_b: String,
    net: String,
}

impl VethPair {
    /// `gso`: leave TSO/GSO/GRO as the kernel sets them (on); otherwise off, so each packet
    /// on the wire is one skb and the interface counters count packets.
    fn new(tag: &str, gso: bool) -> VethPair {
        let id = std::process::id() % 10_000;
        let n = (std::process::id() + u32::from(gso)) % 250 + 1;
        let p = VethPair {
            a: format!("sonde-{tag}-a-{id}"),
            b: format!("sonde-{tag}-b-{id}"),
            veth_a: format!("sfa{tag}{id}"),
            veth_b: format!("sfb{tag}{id}"),
            addr_a: format!("10.200.{n}.1"),
            addr_b: format!("10.200.{n}.2"),
            net: format!("10.200.{n}.0/30"),
        };
        let _ = Command::new("ip").args(["netns", "del", &p.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &p.b]).output();
        ip(&["netns", "add", &p.a]);
        ip(&["netns", "add", &p.b]);
        ip(&[
            "link",
            "add",
            &p.veth_a,
            "address",
            "02:00:00:00:0a:01",
            "netns",
            &p.a,
            "type",
            "veth",
            "peer",
            "name",
            &p.veth_b,
            "address",
            "02:00:00:00:0b:01",
            "netns",
            &p.b,
        ]);
        for (ns, dev, addr, peer, peer_mac) in [
            (&p.a, &p.veth_a, &p.addr_a, &p.addr_b, "02:00:00:00:0b:01"),
            (&p.b, &p.veth_b, &p.addr_b, &p.addr_a, "02:00:00:00:0a:01"),
        ] {
            // No IPv6 (router solicitations, MLD), and no ARP (permanent neighbour entries below):
            // only the test's packets cross the pair.
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
                ],
            );
            // No SACK: a segment's TCP header is then 32 bytes whatever is lost or reordered
            // (SACK blocks made ACKs 12–36 bytes longer when the pair dropped a segment under
            // load, and the exact byte counts below failed by a few hundred bytes).
            run(
                "ip",
                &["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_sack=0"],
            );
            if !gso {
                run(
                    "ip",
                    &[
                        "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
                        "gro", "off",
                    ],
                );
            }
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }

    /// (rx bytes, rx packets, tx bytes, tx packets) of `dev` in `ns`, from the kernel.
    fn stats(ns: &str, dev: &str) -> (u64, u64, u64, u64) {
        let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
        let s = &v[0]["stats64"];
        let n = |dir: &str, what: &str| s[dir][what].as_u64().expect("counter");
        (
            n("rx", "bytes"),
            n("rx", "packets"),
            n("tx", "bytes"),
            n("tx", "packets"),
        )
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

/// Runs Python `code` with `args` in namespace `ns`.
fn python_in(ns: &str, code: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::spawn("python", &mut cmd)
}

/// Waits (bounded) for `p` to exit successfully and returns its standard output.
fn finish(mut p: Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            let mut out = String::new();
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut o) = p.child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = p.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "python failed: {err}");
            return out;
        }
        assert!(Instant::now() < deadline, "python did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// UDP echo server: answers `count` datagrams, then prints how many it got.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
n = 0
while n < int(sys.argv[3]):
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
    n += 1
print(n)
"#;

/// UDP client: sends `count` datagrams of `size` bytes (from `first_port` + i when given,
/// else one socket), one at a time, each waiting for its echo when `echo` is 1.
const UDP_CLIENT: &str = r#"
import socket, sys
host, port, count, size, first_port, echo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
got = 0
one = None
for i in range(count):
    if first_port:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("", first_port + i))
    else:
        if one is None:
            one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s = one
    s.settimeout(10)
    s.sendto(b"x" * size, (host, port))
    if echo:
        s.recvfrom(65536)
        got += 1
    if first_port:
        s.close()
print(got)
"#;

/// What a TCP socket's own counters say once it is closed (`TCP_INFO`): payload bytes it
/// sent, every retransmission included, and segments it sent (GSO aggregates
/// count as their segments), printed after the transfer's byte count.
const TCP_INFO: &str = r#"
import socket, struct, time
def final_info(s):
    deadline = time.time() + 10
    while True:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        if info[0] == 7 or time.time() > deadline:  # TCP_CLOSE: nothing more to send
            break
        time.sleep(0.02)
    segs_out = struct.unpack_from("I", info, 136)[0]
    bytes_sent = struct.unpack_from("Q", info, 200)[0]
    return "%d %d" % (bytes_sent, segs_out)
"#;

/// TCP server: reads until EOF, answers `reply` bytes, closes; prints the bytes it read, then
/// `TCP_INFO`'s figures.
const TCP_SERVER: &str = r#"
import socket, sys
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1)
l.settimeout(20)
c, _ = l.accept()
n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
c.sendall(b"y" * int(sys.argv[3]))
c.shutdown(socket.SHUT_WR)
print(n, final_info(c))
c.close()
"#;

/// TCP client: sends `size` bytes, half-closes, reads the reply to EOF; prints its length,
/// then `TCP_INFO`'s figures.
const TCP_CLIENT: &str = r#"
import socket, sys, time
deadline = time.time() + 20
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
n = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    n += len(b)
print(n, final_info(s))
s.close()
"#;

/// Waits until a TCP socket listens on `port` in `ns` (so the client's first SYN is
/// answered: a refused attempt would add its SYN and the RST to the counts).
fn wait_listening(ns: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "ss",
            "-Hltn",
            &format!("sport = :{port}"),
        ],
    )
    .trim()
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a TCP script: the transfer's byte count, payload bytes sent (retransmissions
/// included) and segments sent.
fn tcp_in(ns: &str, script: &str, args: &[&str]) -> Proc {
    python_in(ns, &format!("{TCP_INFO}{script}"), args)
}

/// Parses what a TCP script printed.
fn tcp_result(out: &str) -> (u64, u64, u64) {
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    assert_eq!(v.len(), 3, "{out}");
    (v[0], v[1], v[2])
}

/// The samples of `metric` in the exposition: labels (as a map) and value.
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            Some((map, value.trim().parse().ok()?))
        })
        .collect()
}

/// Sum of `metric` over the samples whose labels include every pair of `want`.
fn total(text: &str, metric: &str, want: &[(&str, &str)]) -> u64 {
    samples(text, metric)
        .into_iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Starts `sonde` with flow metrics on, reporting every 500 ms, with `extra` YAML.
fn start_sonde(dir: &TempDir, metrics_port: u16, extra: &str) -> Sonde {
    start_sonde_env(dir, metrics_port, extra, &[])
}

/// [`start_sonde`] with environment variables `env`.
fn start_sonde_env(dir: &TempDir, metrics_port: u16, extra: &str, env: &[(&str, &str)]) -> Sonde {
    let yaml = format!(
        "prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\nnetwork:\n  enable: true\n  cache_active_timeout: 500ms\n{extra}"
    );
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, yaml).expect("config");
    let s = Sonde::start_binary(
        "sonde",
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            "1",
        ],
        env,
        dir,
    );
    s.wait_log("processor connected", Duration::from_secs(30));
    s.wait_log("network flow metrics on", Duration::from_secs(5));
    s.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    s
}

/// Scrapes until `done` holds on the exposition (the loader reports every 500 ms), or panics
/// with the last exposition after 20 s.
fn scrape_until(metrics_port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = http_get(metrics_port, "/metrics");
        if done(&text) {
            // One more report interval: nothing else may arrive.
            std::thread::sleep(Duration::from_millis(1200));
            return http_get(metrics_port, "/metrics");
        }
        assert!(Instant::now() < deadline, "{what}: never reached:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const BYTES: &str = "beyla_network_flow_bytes_total";
const PACKETS: &str = "beyla_network_flow_packets_total";

/// UDP and TCP between two namespaces, without segmentation offloads: every series equals
/// what was sent and the veth pair's own counters, per interface and direction; CIDRs name
/// both ends with the most specific configured range.
#[test]
fn flows_between_namespaces_match_what_was_sent_and_the_interface_counters() {
    let _guard = serial();
    let dir = TempDir::new("flows");
    let pair = VethPair::new("x", false);
    let metrics_port = free_port();
    let extra = format!(
        "  cidrs: [{}/32, {}, 10.0.0.0/8]\nattributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [direction, iface, transport, src.port, dst.port, src.cidr, dst.cidr, src.address]\n",
        pair.addr_a, pair.net
    );
    let _sonde = start_sonde(&dir, metrics_port, &extra);
    let before_a = VethPair::stats(&pair.a, &pair.veth_a);
    let before_b = VethPair::stats(&pair.b, &pair.veth_b);

    // UDP: 100 datagrams of 1000 bytes, each echoed.
    let server = python_in(&pair.b, UDP_ECHO, &[&pair.addr_b, "9000", "100"]);
    std::thread::sleep(Duration::from_millis(300));
    let client = python_in(
        &pair.a,
        UDP_CLIENT,
        &[&pair.addr_b, "9000", "100", "1000", "0", "1"],
    );
    assert_eq!(finish(client).trim(), "100");
    assert_eq!(finish(server).trim(), "100");

    let udp_bytes = 100 * (1000 + 8 + 20);
    let udp = |text: &str, iface: &str, direction: &str, metric: &str| {
        total(
            text,
            metric,
            &[
                ("iface", iface),
                ("direction", direction),
                ("transport", "udp"),
            ],
        )
    };
    let (va, vb) = (pair.veth_a.clone(), pair.veth_b.clone());
    let text = scrape_until(metrics_port, "UDP counted on both ends", |t| {
        udp(t, &va, "egress", BYTES) >= udp_bytes && udp(t, &vb, "egress", BYTES) >= udp_bytes
    });
    for iface in [&pair.veth_a, &pair.veth_b] {
        for direction in ["ingress", "egress"] {
            assert_eq!(
                udp(&text, iface, direction, BYTES),
                udp_bytes,
                "{iface} {direction}:\n{text}"
            );
            assert_eq!(
                udp(&text, iface, direction, PACKETS),
                100,
                "{iface} {direction}"
            );
        }
    }
    // CIDRs: the client's /32 is more specific than the pair's /30; the server has the /30.
    let udp_out = samples(&text, BYTES)
        .into_iter()
        .filter(|(l, _)| l["transport"] == "udp" && l["iface"] == pair.veth_a)
        .collect::<Vec<_>>();
    assert!(!udp_out.is_empty());
    for (l, _) in &udp_out {
        let (client_cidr, server_cidr) = (format!("{}/32", pair.addr_a), pair.net.clone());
        let (src, dst) = if l["direction"] == "egress" {
            (client_cidr, server_cidr)
        } else {
            (server_cidr, client_cidr)
        };
        assert_eq!((&l["src_cidr"], &l["dst_cidr"]), (&src, &dst), "{l:?}");
        assert_eq!(
            l["src_address"],
            if l["direction"] == "egress" {
                pair.addr_a.clone()
            } else {
                pair.addr_b.clone()
            }
        );
    }

    // TCP: 1 MB up, 100 kB down.
    let server = tcp_in(&pair.b, TCP_SERVER, &[&pair.addr_b, "9001", "100000"]);
    wait_listening(&pair.b, 9001);
    let client = tcp_in(&pair.a, TCP_CLIENT, &[&pair.addr_b, "9001", "1000000"]);
    let (got, client_sent, client_segs) = tcp_result(&finish(client));
    assert_eq!(got, 100_000);
    let (got, server_sent, server_segs) = tcp_result(&finish(server));
    assert_eq!(got, 1_000_000);
    assert!(
        client_sent >= 1_000_000,
        "the client sent {client_sent} payload bytes"
    );
    assert!(
        server_sent >= 100_000,
        "the server sent {server_sent} payload bytes"
    );
    // The last ACKs of the close may follow the processes' exit.
    std::thread::sleep(Duration::from_millis(300));

    let after_a = VethPair::stats(&pair.a, &pair.veth_a);
    let after_b = VethPair::stats(&pair.b, &pair.veth_b);
    // (IP bytes, packets) of each direction, from the kernel's interface counters: veth
    // counts frames, 14 bytes of Ethernet header each.
    let kernel = |before: (u64, u64, u64, u64), after: (u64, u64, u64, u64)| {
        let rx_packets = after.1 - before.1;
        let tx_packets = after.3 - before.3;
        (
            (after.0 - before.0 - 14 * rx_packets, rx_packets),
            (after.2 - before.2 - 14 * tx_packets, tx_packets),
        )
    };
    let (a_in, a_out) = kernel(before_a, after_a);
    let (b_in, b_out) = kernel(before_b, after_b);
    let all = |text: &str, iface: &str, direction: &str| {
        (
            total(text, BYTES, &[("iface", iface), ("direction", direction)]),
            total(text, PACKETS, &[("iface", iface), ("direction", direction)]),
        )
    };
    let text = scrape_until(metrics_port, "TCP counted", |t| {
        all(t, &va, "egress").1 >= a_out.1 && all(t, &vb, "egress").1 >= b_out.1
    });
    assert_eq!(all(&text, &pair.veth_a, "egress"), a_out, "{text}");
    assert_eq!(all(&text, &pair.veth_a, "ingress"), a_in, "{text}");
    assert_eq!(all(&text, &pair.veth_b, "egress"), b_out, "{text}");
    assert_eq!(all(&text, &pair.veth_b, "ingress"), b_in, "{text}");
    // Each packet is counted once per interface: what leaves one end enters the other.
    assert_eq!(a_out, b_in);
    assert_eq!(b_out, a_in);

    // TCP, from each socket's own counters: as many segments as the socket sent, and its
    // payload (retransmissions included) + 52 bytes per segment (+8 for the SYN or SYN-ACK).
    let tcp = |iface: &str, direction: &str| {
        let want = [
            ("iface", iface),
            ("direction", direction),
            ("transport", "tcp"),
        ];
        (total(&text, BYTES, &want), total(&text, PACKETS, &want))
    };
    let (up_bytes, up_packets) = tcp(&pair.veth_a, "egress");
    // The client closes first: its TIME_WAIT remnant may ACK a retransmitted FIN of the
    // server after the socket's counters were read (a 52-byte segment, no payload).
    assert!(
        (client_segs..=client_segs + 2).contains(&up_packets),
        "client → server: {up_packets} packets, the socket sent {client_segs}"
    );
    assert_eq!(
        up_bytes,
        client_sent + 52 * up_packets + 8,
        "client → server"
    );
    let (down_bytes, down_packets) = tcp(&pair.veth_b, "egress");
    // The SYN-ACK goes out on the listener's behalf: not in the accepted socket's count.
    assert_eq!(down_packets, server_segs + 1, "server → client");
    assert_eq!(
        down_bytes,
        server_sent + 52 * down_packets + 8,
        "server → client"
    );
}

/// With segmentation offloads on (the default), TCP leaves and arrives as GSO/GRO
/// aggregates: each counts as the segments it stands for, so the header accounting holds
/// exactly as without offloads.
#[test]
fn gso_aggregates_count_as_their_segments() {
    let _guard = serial();
    let dir = TempDir::new("flows-gso");
    let pair = VethPair::new("g", true);
    let metrics_port = free_port();
    let extra = "attributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [direction, iface, transport]\n";
    let _sonde = start_sonde(&dir, metrics_port, extra);
    let before = VethPair::stats(&pair.a, &pair.veth_a);
    let server = tcp_in(&pair.b, TCP_SERVER, &[&pair.addr_b, "9002", "100"]);
    wait_listening(&pair.b, 9002);
    let client = tcp_in(&pair.a, TCP_CLIENT, &[&pair.addr_b, "9002", "4000000"]);
    let (got, sent, segs) = tcp_result(&finish(client));
    assert_eq!(got, 100);
    assert!(sent >= 4_000_000, "the client sent {sent} payload bytes");
    assert_eq!(tcp_result(&finish(server)).0, 4_000_000);
    let after = VethPair::stats(&pair.a, &pair.veth_a);
    let frames = after.3 - before.3;
    let va = pair.veth_a.clone();
    let want = [
        ("iface", va.as_str()),
        ("direction", "egress"),
        ("transport", "tcp"),
    ];
    let text = scrape_until(metrics_port, "TCP counted", |t| {
        total(t, BYTES, &want) >= 4_000_000
    });
    let (bytes, packets) = (total(&text, BYTES, &want), total(&text, PACKETS, &want));
    // As above: the client's TIME_WAIT remnant may ACK a retransmitted FIN.
    assert!(
        (segs..=segs + 2).contains(&packets),
        "{packets} packets, the socket sent {segs}:\n{text}"
    );
    assert_eq!(bytes, sent + 52 * packets + 8, "{text}");
    // Fewer frames than segments: the sender's skbs were aggregates.
    assert!(
        frames < packets,
        "{frames} frames for {packets} segments: no GSO?"
    );
}

/// The default attribute set (`direction` only, no CIDRs, no Kubernetes): 1,000 client
/// ports give one series per direction, however many flows there were.
#[test]
fn default_attributes_keep_a_thousand_client_ports_in_two_series() {
    let _guard = serial();
    let dir = TempDir::new("flows-card");
    let pair = VethPair::new("c", false);
    let metrics_port = free_port();
    let _sonde = start_sonde(&dir, metrics_port, "");
    let client = python_in(
        &pair.a,
        UDP_CLIENT,
        &[&pair.addr_b, "9003", "1000", "100", "20000", "0"],
    );
    assert_eq!(finish(client).trim(), "0");
    let text = scrape_until(metrics_port, "1,000 datagrams", |t| {
        total(t, PACKETS, &[("direction", "egress")]) >= 1000
            && total(t, PACKETS, &[("direction", "ingress")]) >= 1000
    });
    for metric in [BYTES, PACKETS] {
        let series = samples(&text, metric);
        let labels: Vec<_> = series.iter().map(|(l, _)| l.clone()).collect();
        assert_eq!(series.len(), 2, "{metric}: {labels:?}");
        for (l, _) in &series {
            assert_eq!(l.keys().collect::<Vec<_>>(), ["direction"], "{l:?}");
        }
    }
}

/// OTLP: the same UDP exchange reaches a real OTLP receiver as the cumulative sums
/// `beyla.network.flow.bytes` / `.packets` under the host-level flow resource.
#[test]
fn flows_are_exported_over_otlp_as_sums() {
    let _guard = serial();
    let dir = TempDir::new("flows-otlp");
    let pair = VethPair::new("o", false);
    let http_port = free_port();
    let receiver = sonde_e2e::otlp::Receiver::start(&dir, 0, http_port);
    let metrics_port = free_port();
    let extra = format!(
        "otel_metrics_export:\n  endpoint: http://127.0.0.1:{http_port}\n  protocol: http/protobuf\n  interval: 500ms\nattributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [direction, iface, transport]\n"
    );
    let _sonde = start_sonde(&dir, metrics_port, &extra);
    let server = python_in(&pair.b, UDP_ECHO, &[&pair.addr_b, "9004", "100"]);
    std::thread::sleep(Duration::from_millis(300));
    let client = python_in(
        &pair.a,
        UDP_CLIENT,
        &[&pair.addr_b, "9004", "100", "1000", "0", "1"],
    );
    assert_eq!(finish(client).trim(), "100");
    assert_eq!(finish(server).trim(), "100");
    let value = |name: &str| {
        receiver
            .latest_points()
            .into_iter()
            .filter(|p| {
                p["name"] == name
                    && p["attributes"]["iface"] == pair.veth_a.as_str()
                    && p["attributes"]["direction"] == "egress"
                    && p["attributes"]["transport"] == "udp"
            })
            .map(|p| {
                assert_eq!(p["kind"], "sum", "{p}");
                assert_eq!(p["resource"]["service.name"], "sonde-network-flows", "{p}");
                p["value"].as_u64().unwrap_or(0)
            })
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while value("beyla.network.flow.bytes") < 100 * 1028 {
        assert!(
            Instant::now() < deadline,
            "no flow sums: {:?}",
            receiver.latest_points()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(value("beyla.network.flow.bytes"), 100 * 1028);
    assert_eq!(value("beyla.network.flow.packets"), 100);
}

/// Kubernetes metadata on (the fake API server serves two pods of this node whose addresses
/// are the veth pair's: `frontend` of Deployment `frontend` (through its ReplicaSet) in
/// namespace `shop`, and a pod of DaemonSet `collector` in `monitoring`): the default
/// attributes name each end by its pod's top owner and namespace. 200 datagrams from 200
/// client ports and their echoes are four series per metric (two interfaces × two
/// directions), each of exactly 200 packets of 128 bytes (100 + 8 UDP + 20 IPv4); every
/// other flow on the host (loopback: the scrapes, the API server) has no pod at either end
/// and empty `k8s_src_*` / `k8s_dst_*` (at most one series per direction).
#[test]
fn kubernetes_defaults_name_both_ends_by_their_pods_owner_and_namespace() {
    use sonde_e2e::kube::{FakeKube, PodBuilder, Workload, namespace, node};
    const NODE: &str = "sonde-e2e-flows-node";
    const CLUSTER: &str = "e2e-flows";
    let _guard = serial();
    let dir = TempDir::new("flows-k8s");
    let pair = VethPair::new("k", false);
    let frontend =
        PodBuilder::new(Workload::Deployment("frontend".into()), "shop", NODE).ip(&pair.addr_a);
    let collector = PodBuilder::new(Workload::DaemonSet("collector".into()), "monitoring", NODE)
        .ip(&pair.addr_b);
    let mut objects = vec![
        node(NODE),
        namespace("shop"),
        namespace("monitoring"),
        namespace("other"),
    ];
    objects.extend(frontend.objects());
    objects.extend(collector.objects());
    // Another node's pod with the client's address is not known (the watch is node-scoped).
    objects.extend(
        PodBuilder::new(Workload::Bare("elsewhere".into()), "other", "other-node")
            .ip(&pair.addr_a)
            .objects(),
    );
    let fake = FakeKube::start_with(&objects);
    let kubeconfig = fake.kubeconfig();
    let metrics_port = free_port();
    let sonde = start_sonde_env(
        &dir,
        metrics_port,
        "",
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf-8")),
            ("K8S_NODE_NAME", NODE),
            ("BEYLA_KUBE_CLUSTER_NAME", CLUSTER),
        ],
    );
    sonde.wait_log(
        "Kubernetes metadata: pods of this node listed",
        Duration::from_secs(20),
    );
    // The ReplicaSets are listed too (the Deployment is known) once their watch is open.
    fake.wait_watches(Duration::from_secs(20), |w| {
        w.iter().any(|w| w["resource"] == "replicasets")
    });
    std::thread::sleep(Duration::from_millis(500));
    let server = python_in(&pair.b, UDP_ECHO, &[&pair.addr_b, "9005", "200"]);
    std::thread::sleep(Duration::from_millis(300));
    let client = python_in(
        &pair.a,
        UDP_CLIENT,
        &[&pair.addr_b, "9005", "200", "100", "21000", "1"],
    );
    assert_eq!(finish(client).trim(), "200");
    assert_eq!(finish(server).trim(), "200");
    let pods = [
        ("frontend", "Deployment", "shop"),
        ("collector", "DaemonSet", "monitoring"),
    ];
    let ends = |src: usize, direction: &'static str| {
        let (sn, st, sns) = pods[src];
        let (dn, dt, dns) = pods[1 - src];
        vec![
            ("direction", direction),
            ("k8s_src_owner_name", sn),
            ("k8s_src_owner_type", st),
            ("k8s_src_namespace", sns),
            ("k8s_dst_owner_name", dn),
            ("k8s_dst_owner_type", dt),
            ("k8s_dst_namespace", dns),
            ("k8s_cluster_name", CLUSTER),
        ]
    };
    // Requests: out of veth_a, into veth_b; echoes: out of veth_b, into veth_a.
    let expected = [
        ends(0, "egress"),
        ends(0, "ingress"),
        ends(1, "egress"),
        ends(1, "ingress"),
    ];
    let text = scrape_until(metrics_port, "the pods' flows", |t| {
        expected.iter().all(|e| total(t, PACKETS, e) >= 200)
    });
    for e in &expected {
        assert_eq!(total(&text, PACKETS, e), 200, "{e:?}:\n{text}");
        assert_eq!(total(&text, BYTES, e), 200 * 128, "{e:?}:\n{text}");
    }
    let keys = [
        "direction",
        "k8s_cluster_name",
        "k8s_dst_namespace",
        "k8s_dst_owner_name",
        "k8s_dst_owner_type",
        "k8s_src_namespace",
        "k8s_src_owner_name",
        "k8s_src_owner_type",
    ];
    for metric in [BYTES, PACKETS] {
        let series = samples(&text, metric);
        let mut with_pods = 0;
        for (l, _) in &series {
            assert_eq!(
                l.keys().map(String::as_str).collect::<Vec<_>>(),
                keys,
                "{l:?}"
            );
            assert_eq!(l["k8s_cluster_name"], CLUSTER, "{l:?}");
            if l["k8s_src_owner_name"].is_empty() && l["k8s_dst_owner_name"].is_empty() {
                for k in &keys[2..] {
                    assert_eq!(l[*k], "", "{l:?}");
                }
            } else {
                with_pods += 1;
                assert!(
                    expected.iter().any(|e| e
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))),
                    "unexpected series {l:?}"
                );
            }
        }
        assert_eq!(with_pods, 4, "{metric}:\n{text}");
        assert!(
            series.len() <= 6,
            "{metric}: {} series:\n{text}",
            series.len()
        );
    }
}
