//! Every message round-trips through encode → decode with hostile values, limits cut or refuse
//! as documented, and malformed datagrams give a typed error, never a panic.

use std::os::fd::{AsFd, OwnedFd};

use super::*;
use crate::control_capnp::{loader_message, processor_message};

fn datagram(bytes: Vec<u8>) -> Datagram {
    Datagram {
        bytes,
        fds: Vec::new(),
    }
}

fn some_fd() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").expect("open /dev/null"))
}

fn loader_round_trip(message: &LoaderMessage) -> LoaderMessage {
    let mut d = datagram(message.encode().expect("encode"));
    for _ in 0..message.fd_count() {
        d.fds.push(some_fd());
    }
    LoaderMessage::decode(&d).expect("decode")
}

fn processor_round_trip(message: &ProcessorMessage) -> ProcessorMessage {
    ProcessorMessage::decode(&datagram(message.encode().expect("encode"))).expect("decode")
}

/// Raw datagrams built with the generated capnp code, for what the typed encoder never writes.
fn raw_loader(build: impl FnOnce(loader_message::Builder<'_>)) -> Datagram {
    let mut msg = capnp::message::Builder::new_default();
    build(msg.init_root::<loader_message::Builder<'_>>());
    datagram(capnp::serialize::write_message_to_words(&msg))
}

fn raw_processor(build: impl FnOnce(processor_message::Builder<'_>)) -> Datagram {
    let mut msg = capnp::message::Builder::new_default();
    build(msg.init_root::<processor_message::Builder<'_>>());
    datagram(capnp::serialize::write_message_to_words(&msg))
}

/// Strings that break naive code: empty, multi-byte characters across every cut point,
/// control characters, quotes, NUL.
fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        "a".into(),
        "é".into(),
        "日本語のサービス".into(),
        "🦀 crab 🦀".into(),
        "line\nbreak\ttab\r\"quote' #hash : colon".into(),
        "nul\0inside".into(),
        "\u{202e}right-to-left override".into(),
    ]
}

#[test]
fn welcome_round_trips_with_its_fd() {
    for (data_size, page_size) in [(4096, 4096), (1 << 30, 65536), (0, 0), (u32::MAX, u32::MAX)] {
        let m = LoaderMessage::Welcome(Welcome {
            data_size,
            page_size,
        });
        assert_eq!(m.fd_count(), 1);
        assert_eq!(loader_round_trip(&m), m);
    }
}

#[test]
fn process_records_round_trip_with_hostile_text() {
    for s in hostile_strings() {
        let m = LoaderMessage::ProcessAdded(ProcessRecord {
            pid: u32::MAX,
            exe_path: format!("/opt/{s}/bin"),
            cmdline: vec![s.clone(), String::new(), s.clone()],
            service_name: s.clone(),
            reason: format!("exe {s}"),
            container_id: s.clone(),
            env_service_name: s.clone(),
            env_service_namespace: s.clone(),
            selector_service_name: s.clone(),
            selector_service_namespace: s.clone(),
        });
        assert_eq!(loader_round_trip(&m), m);
    }
    let empty = LoaderMessage::ProcessAdded(ProcessRecord::default());
    assert_eq!(loader_round_trip(&empty), empty);
}

#[test]
fn process_record_at_every_limit_fits_one_datagram() {
    let record = ProcessRecord {
        pid: 1,
        exe_path: "x".repeat(MAX_EXE_PATH_BYTES),
        cmdline: vec!["y".repeat(MAX_CMDLINE_ARG_BYTES); MAX_CMDLINE_ARGS],
        service_name: "z".repeat(MAX_SERVICE_NAME_BYTES),
        reason: "r".repeat(MAX_REASON_BYTES),
        container_id: "c".repeat(MAX_CONTAINER_ID_BYTES),
        env_service_name: "e".repeat(MAX_SERVICE_NAME_BYTES),
        env_service_namespace: "f".repeat(MAX_SERVICE_NAME_BYTES),
        selector_service_name: "g".repeat(MAX_SERVICE_NAME_BYTES),
        selector_service_namespace: "h".repeat(MAX_SERVICE_NAME_BYTES),
    };
    let m = LoaderMessage::ProcessAdded(record);
    assert!(m.encode().expect("encode").len() < channel::MAX_MESSAGE_BYTES / 2);
    assert_eq!(loader_round_trip(&m), m);
}

#[test]
fn over_long_process_fields_are_cut_at_character_boundaries() {
    // Three-byte characters, one more than fits, so no limit (powers of two) falls on a
    // character boundary.
    let long = |max: usize| "€".repeat(max / 3 + 1);
    let cut = |max: usize| "€".repeat(max / 3);
    let sent = ProcessRecord {
        pid: 7,
        exe_path: long(MAX_EXE_PATH_BYTES),
        cmdline: vec![long(MAX_CMDLINE_ARG_BYTES); MAX_CMDLINE_ARGS + 10],
        service_name: long(MAX_SERVICE_NAME_BYTES),
        reason: long(MAX_REASON_BYTES),
        container_id: long(MAX_CONTAINER_ID_BYTES),
        env_service_name: long(MAX_SERVICE_NAME_BYTES),
        ..ProcessRecord::default()
    };
    let want = ProcessRecord {
        pid: 7,
        exe_path: cut(MAX_EXE_PATH_BYTES),
        cmdline: vec![cut(MAX_CMDLINE_ARG_BYTES); MAX_CMDLINE_ARGS],
        service_name: cut(MAX_SERVICE_NAME_BYTES),
        reason: cut(MAX_REASON_BYTES),
        container_id: cut(MAX_CONTAINER_ID_BYTES),
        env_service_name: cut(MAX_SERVICE_NAME_BYTES),
        ..ProcessRecord::default()
    };
    assert_eq!(
        loader_round_trip(&LoaderMessage::ProcessAdded(sent)),
        LoaderMessage::ProcessAdded(want.clone())
    );

    // A peer that does not cut is cut by the receiver the same way.
    let raw = raw_loader(|m| {
        let mut p = m.init_process_added();
        p.set_pid(7);
        p.set_exe_path(long(MAX_EXE_PATH_BYTES));
        p.set_service_name(long(MAX_SERVICE_NAME_BYTES));
        p.set_reason(long(MAX_REASON_BYTES));
        p.set_container_id(long(MAX_CONTAINER_ID_BYTES));
        p.set_env_service_name(long(MAX_SERVICE_NAME_BYTES));
        let mut args = p.init_cmdline((MAX_CMDLINE_ARGS + 10) as u32);
        for i in 0..(MAX_CMDLINE_ARGS + 10) as u32 {
            args.set(i, long(MAX_CMDLINE_ARG_BYTES));
        }
    });
    assert_eq!(
        LoaderMessage::decode(&raw).expect("decode"),
        LoaderMessage::ProcessAdded(want)
    );
}

#[test]
fn four_byte_characters_are_never_split() {
    let crab = "🦀".repeat(100);
    let m = LoaderMessage::ProcessAdded(ProcessRecord {
        service_name: crab.clone(),
        ..ProcessRecord::default()
    });
    let LoaderMessage::ProcessAdded(got) = loader_round_trip(&m) else {
        std::panic!("not a process");
    };
    assert_eq!(got.service_name, "🦀".repeat(MAX_SERVICE_NAME_BYTES / 4));
}

#[test]
fn removals_stats_and_refusals_round_trip() {
    for pid in [0, 1, u32::MAX] {
        let m = LoaderMessage::ProcessRemoved(pid);
        assert_eq!(loader_round_trip(&m), m);
    }
    let none = LoaderMessage::KernelStats(Vec::new());
    assert_eq!(loader_round_trip(&none), none);
    let every: Vec<(String, u64)> = crate::counters::NAMES
        .iter()
        .map(|n| (n.to_string(), u64::MAX))
        .chain(hostile_strings().into_iter().map(|s| (s, 0)))
        .collect();
    let stats = LoaderMessage::KernelStats(every);
    assert_eq!(loader_round_trip(&stats), stats);
    let full =
        LoaderMessage::KernelStats(vec![("n".repeat(MAX_COUNTER_NAME_BYTES), 1); MAX_COUNTERS]);
    assert_eq!(loader_round_trip(&full), full);
    let long_name = LoaderMessage::KernelStats(vec![("é".repeat(MAX_COUNTER_NAME_BYTES), 3)]);
    assert_eq!(
        loader_round_trip(&long_name),
        LoaderMessage::KernelStats(vec![("é".repeat(MAX_COUNTER_NAME_BYTES / 2), 3)])
    );
    for s in hostile_strings() {
        let m = LoaderMessage::Refused(s);
        assert_eq!(loader_round_trip(&m), m);
    }
    assert_eq!(
        loader_round_trip(&LoaderMessage::Refused("x".repeat(10_000))),
        LoaderMessage::Refused("x".repeat(MAX_REASON_NOTE_BYTES))
    );
}

#[test]
fn too_many_counters_are_refused_both_ways() {
    let over = vec![(String::from("c"), 0u64); MAX_COUNTERS + 1];
    assert!(matches!(
        LoaderMessage::KernelStats(over).encode(),
        Err(ControlError::TooMany {
            message: "kernel stats",
            field: "counters",
            count,
            limit: MAX_COUNTERS,
        }) if count == MAX_COUNTERS + 1
    ));
    let raw = raw_loader(|m| {
        m.init_kernel_stats().init_counters(MAX_COUNTERS as u32 + 1);
    });
    assert!(matches!(
        LoaderMessage::decode(&raw),
        Err(ControlError::TooMany {
            field: "counters",
            ..
        })
    ));
}

#[test]
fn hellos_round_trip() {
    for s in hostile_strings() {
        for sandbox in [
            None,
            Some(SandboxState {
                landlock: true,
                seccomp_filters: 4,
            }),
            Some(SandboxState {
                landlock: false,
                seccomp_filters: u8::MAX,
            }),
        ] {
            for inject_sampled_below in [None, Some(0), Some(12345), Some(1 << 63)] {
                let m = ProcessorMessage::Hello(Hello {
                    agent: s.clone(),
                    sandbox,
                    inject_sampled_below,
                });
                assert_eq!(processor_round_trip(&m), m);
            }
        }
    }
    // A bound past the range is the range's end: every trace.
    let over = ProcessorMessage::Hello(Hello {
        agent: String::new(),
        sandbox: None,
        inject_sampled_below: Some(u64::MAX),
    });
    assert!(matches!(
        processor_round_trip(&over),
        ProcessorMessage::Hello(Hello {
            inject_sampled_below: Some(b),
            ..
        }) if b == 1 << 63
    ));
    let long = ProcessorMessage::Hello(Hello {
        agent: "ä".repeat(MAX_AGENT_BYTES),
        sandbox: None,
        inject_sampled_below: None,
    });
    assert_eq!(
        processor_round_trip(&long),
        ProcessorMessage::Hello(Hello {
            agent: "ä".repeat(MAX_AGENT_BYTES / 2),
            sandbox: None,
            inject_sampled_below: None,
        })
    );
}

#[test]
fn the_hello_keeps_its_status_file_form() {
    // The loader writes the hello into `sonde-status.json` and `--audit` reads it back.
    let hello = Hello {
        agent: "sonde-processor 0.1.0".into(),
        sandbox: Some(SandboxState {
            landlock: true,
            seccomp_filters: 2,
        }),
        inject_sampled_below: Some(7),
    };
    // A status file written before the field existed still reads.
    let old: Hello = serde_json::from_str(r#"{"agent":"a","sandbox":null}"#).expect("old form");
    assert_eq!(old.inject_sampled_below, None);
    let json = serde_json::to_string(&hello).expect("serialize");
    assert_eq!(
        serde_json::from_str::<Hello>(&json).expect("deserialize"),
        hello
    );
}

#[test]
fn narrowing_requests_round_trip_up_to_the_limit() {
    for pids in [
        Vec::new(),
        vec![0, 1, u32::MAX],
        (0..MAX_NARROW_PIDS as u32).rev().collect(),
        vec![u32::MAX; MAX_NARROW_PIDS],
    ] {
        let m = ProcessorMessage::Narrow(pids);
        assert_eq!(processor_round_trip(&m), m);
    }
}

#[test]
fn over_long_narrowing_requests_are_refused_both_ways() {
    let over = ProcessorMessage::Narrow(vec![1; MAX_NARROW_PIDS + 1]);
    assert!(matches!(
        over.encode(),
        Err(ControlError::TooMany {
            message: "narrowing request",
            field: "pids",
            ..
        })
    ));
    let raw = raw_processor(|m| {
        m.init_narrow().init_stop_pids(MAX_NARROW_PIDS as u32 + 1);
    });
    assert!(matches!(
        ProcessorMessage::decode(&raw),
        Err(ControlError::TooMany { count, limit: MAX_NARROW_PIDS, .. }) if count == MAX_NARROW_PIDS + 1
    ));
}

#[test]
fn goodbyes_round_trip() {
    for s in hostile_strings() {
        let m = ProcessorMessage::Goodbye(s);
        assert_eq!(processor_round_trip(&m), m);
    }
    assert_eq!(
        processor_round_trip(&ProcessorMessage::Goodbye("€".repeat(1000))),
        ProcessorMessage::Goodbye("€".repeat(MAX_REASON_NOTE_BYTES / 3))
    );
}

#[test]
fn invalid_utf8_is_replaced_not_refused() {
    let raw = raw_processor(|mut m| m.set_goodbye(capnp::text::Reader::from(&b"ab\xffcd"[..])));
    assert_eq!(
        ProcessorMessage::decode(&raw).expect("decode"),
        ProcessorMessage::Goodbye("ab\u{fffd}cd".into())
    );
    let raw = raw_loader(|m| {
        let mut p = m.init_process_added();
        p.set_exe_path(capnp::text::Reader::from(&b"/bin/\xc3"[..]));
    });
    let Ok(LoaderMessage::ProcessAdded(p)) = LoaderMessage::decode(&raw) else {
        std::panic!("not decoded");
    };
    assert_eq!(p.exe_path, "/bin/\u{fffd}");
}

#[test]
fn another_protocol_version_is_refused() {
    let hello = raw_processor(|m| {
        let mut h = m.init_hello();
        h.set_protocol_version(PROTOCOL_VERSION + 1);
        h.set_agent("future");
    });
    assert!(matches!(
        ProcessorMessage::decode(&hello),
        Err(ControlError::Version { message: "hello", peer, ours: PROTOCOL_VERSION }) if peer == PROTOCOL_VERSION + 1
    ));
    let mut welcome = raw_loader(|m| {
        m.init_welcome().set_protocol_version(0);
    });
    welcome.fds.push(some_fd());
    assert!(matches!(
        LoaderMessage::decode(&welcome),
        Err(ControlError::Version {
            message: "welcome",
            peer: 0,
            ..
        })
    ));
}

#[test]
fn fds_must_match_the_message() {
    // A welcome without its ring buffer fd.
    let bytes = LoaderMessage::Welcome(Welcome {
        data_size: 4096,
        page_size: 4096,
    })
    .encode()
    .expect("encode");
    assert!(matches!(
        LoaderMessage::decode(&datagram(bytes.clone())),
        Err(ControlError::Fds {
            message: "welcome",
            expected: 1,
            got: 0
        })
    ));
    // A welcome naming an fd it did not carry.
    let mut bad_index = raw_loader(|m| {
        let mut w = m.init_welcome();
        w.set_protocol_version(PROTOCOL_VERSION);
        w.init_ring_buffer().set_fd_index(3);
    });
    bad_index.fds.push(some_fd());
    assert!(matches!(
        LoaderMessage::decode(&bad_index),
        Err(ControlError::FdIndex {
            index: 3,
            count: 1,
            ..
        })
    ));
    // Any other loader message with an fd.
    let mut removed = datagram(LoaderMessage::ProcessRemoved(1).encode().expect("encode"));
    removed.fds.push(some_fd());
    assert!(matches!(
        LoaderMessage::decode(&removed),
        Err(ControlError::Fds {
            message: "process removed",
            expected: 0,
            got: 1
        })
    ));
    // The processor never sends fds.
    let mut bye = datagram(
        ProcessorMessage::Goodbye("x".into())
            .encode()
            .expect("encode"),
    );
    bye.fds.push(some_fd());
    assert!(matches!(
        ProcessorMessage::decode(&bye),
        Err(ControlError::Fds { got: 1, .. })
    ));
}

#[test]
fn an_unknown_message_kind_is_a_decode_error() {
    // Single segment: 8 bytes of segment table, the root pointer, then the root struct's data
    // section, whose first u16 is the union discriminant in both message structs.
    let mut loader = LoaderMessage::ProcessRemoved(5).encode().expect("encode");
    loader[16..18].copy_from_slice(&0xfff0u16.to_le_bytes());
    assert!(matches!(
        LoaderMessage::decode(&datagram(loader)),
        Err(ControlError::Decode {
            message: "loader message",
            field: "kind",
            ..
        })
    ));
    let mut processor = ProcessorMessage::Narrow(vec![1]).encode().expect("encode");
    processor[16..18].copy_from_slice(&0xfff0u16.to_le_bytes());
    assert!(matches!(
        ProcessorMessage::decode(&datagram(processor)),
        Err(ControlError::Decode {
            message: "processor message",
            field: "kind",
            ..
        })
    ));
}

#[test]
fn garbage_is_a_decode_error() {
    for bytes in [
        Vec::new(),
        vec![0u8; 3],
        vec![0xffu8; 64],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        assert!(matches!(
            LoaderMessage::decode(&datagram(bytes.clone())),
            Err(ControlError::Decode {
                field: "datagram",
                ..
            })
        ));
        assert!(matches!(
            ProcessorMessage::decode(&datagram(bytes)),
            Err(ControlError::Decode {
                field: "datagram",
                ..
            })
        ));
    }
}

/// A small deterministic generator, so the corruption test needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn cut_or_corrupted_datagrams_never_panic() {
    let samples: Vec<Vec<u8>> = vec![
        LoaderMessage::ProcessAdded(ProcessRecord {
            pid: 9,
            exe_path: "/usr/bin/python3".into(),
            cmdline: vec!["python3".into(), "-m".into(), "http.server".into()],
            service_name: "python3".into(),
            reason: "port 8000".into(),
            container_id: "ab".repeat(32),
            ..ProcessRecord::default()
        })
        .encode()
        .expect("encode"),
        LoaderMessage::KernelStats(vec![("events_sent".into(), 12)])
            .encode()
            .expect("encode"),
        LoaderMessage::Welcome(Welcome {
            data_size: 1 << 20,
            page_size: 4096,
        })
        .encode()
        .expect("encode"),
        ProcessorMessage::Hello(Hello {
            agent: "sonde-processor".into(),
            sandbox: Some(SandboxState {
                landlock: true,
                seccomp_filters: 2,
            }),
            inject_sampled_below: None,
        })
        .encode()
        .expect("encode"),
        ProcessorMessage::Narrow(vec![1, 2, 3])
            .encode()
            .expect("encode"),
    ];
    let decode_both = |bytes: &[u8]| {
        let mut d = datagram(bytes.to_vec());
        let _ = ProcessorMessage::decode(&d);
        let _ = LoaderMessage::decode(&d);
        d.fds.push(some_fd());
        let _ = LoaderMessage::decode(&d);
    };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for sample in &samples {
        for end in 0..sample.len() {
            decode_both(&sample[..end]);
        }
        for _ in 0..2000 {
            let mut bytes = sample.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            decode_both(&bytes);
        }
    }
}

#[test]
fn messages_travel_over_a_socket_with_their_fds() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (loader, processor) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let ring = some_fd();
    let welcome = LoaderMessage::Welcome(Welcome {
        data_size: 1 << 16,
        page_size: 4096,
    });
    // The fd count is checked before anything is sent.
    assert!(matches!(
        welcome.send(loader.as_fd(), &[]),
        Err(ControlError::Fds {
            message: "welcome",
            ..
        })
    ));
    assert!(matches!(
        LoaderMessage::ProcessRemoved(1).send(loader.as_fd(), &[ring.as_fd()]),
        Err(ControlError::Fds { expected: 0, .. })
    ));
    welcome
        .send(loader.as_fd(), &[ring.as_fd()])
        .expect("send welcome");
    let received = channel::recv(processor.as_fd(), 1).expect("recv");
    assert_eq!(received.fds.len(), 1);
    assert_eq!(LoaderMessage::decode(&received).expect("decode"), welcome);

    let bye = ProcessorMessage::Goodbye("stopping".into());
    bye.send(processor.as_fd()).expect("send goodbye");
    let received = channel::recv(loader.as_fd(), 0).expect("recv");
    assert_eq!(ProcessorMessage::decode(&received).expect("decode"), bye);

    drop(processor);
    assert!(matches!(
        LoaderMessage::ProcessRemoved(1).send(loader.as_fd(), &[]),
        Err(ControlError::Send {
            message: "process removed",
            source: ChannelError::Io(_),
        })
    ));
}

#[test]
fn errors_name_the_message_and_keep_their_source() {
    let e = ProcessorMessage::decode(&datagram(vec![1, 2, 3])).expect_err("garbage");
    assert_eq!(e.to_string(), "decoding processor message: field datagram");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn candidates_and_selection_requests_round_trip() {
    let criteria = K8sCriteria {
        key: "discovery.instrument[1]".into(),
        regex: false,
        fields: vec![
            ("k8s_namespace".into(), "shop-*".into()),
            ("k8s_deployment_name".into(), "日本語".into()),
        ],
        pod_labels: vec![("app.kubernetes.io/name".into(), "{a,b}".into())],
        pod_annotations: vec![("note".into(), "x".repeat(MAX_CRITERIA_PATTERN_BYTES + 9))],
    };
    let m = LoaderMessage::CandidateAdded(CandidateRecord {
        process: ProcessRecord {
            pid: 42,
            exe_path: "/usr/bin/python3".into(),
            container_id: "ab".repeat(32),
            ..ProcessRecord::default()
        },
        selectors: vec![criteria.clone(), K8sCriteria::default()],
    });
    let LoaderMessage::CandidateAdded(got) = loader_round_trip(&m) else {
        std::panic!("not a candidate");
    };
    assert_eq!(got.process.pid, 42);
    assert_eq!(got.selectors.len(), 2);
    assert_eq!(got.selectors[0].fields, criteria.fields);
    assert_eq!(got.selectors[0].pod_labels, criteria.pod_labels);
    assert_eq!(
        got.selectors[0].pod_annotations[0].1.len(),
        MAX_CRITERIA_PATTERN_BYTES
    );
    assert_eq!(got.selectors[1], K8sCriteria::default());
    let removed = LoaderMessage::CandidateRemoved(7);
    assert_eq!(loader_round_trip(&removed), removed);
    let too_many = LoaderMessage::CandidateAdded(CandidateRecord {
        process: ProcessRecord::default(),
        selectors: vec![K8sCriteria::default(); MAX_CANDIDATE_SELECTORS + 1],
    });
    assert!(matches!(
        too_many.encode(),
        Err(ControlError::TooMany { .. })
    ));
    for pids in [vec![], vec![1, 2, u32::MAX], vec![9; MAX_NARROW_PIDS]] {
        let m = ProcessorMessage::Select(pids);
        assert_eq!(processor_round_trip(&m), m);
    }
    assert!(matches!(
        ProcessorMessage::Select(vec![1; MAX_NARROW_PIDS + 1]).encode(),
        Err(ControlError::TooMany { .. })
    ));
    let over = raw_processor(|r| {
        r.init_select().init_pids(MAX_NARROW_PIDS as u32 + 1);
    });
    assert!(matches!(
        ProcessorMessage::decode(&over),
        Err(ControlError::TooMany { .. })
    ));
}

fn full_flow(i: u32) -> FlowCount {
    FlowCount {
        src: std::net::Ipv6Addr::from(u128::MAX - u128::from(i)),
        dst: std::net::Ipv4Addr::new(10, 0, 0, i as u8).to_ipv6_mapped(),
        src_port: u16::MAX,
        dst_port: i as u16,
        transport: 17,
        direction: if i.is_multiple_of(2) {
            FlowDirection::Ingress
        } else {
            FlowDirection::Egress
        },
        ifindex: u32::MAX,
        iface: "i".repeat(MAX_IFACE_BYTES),
        bytes: u64::MAX,
        packets: u64::MAX,
    }
}

#[test]
fn flow_counts_round_trip_full_and_refuse_bad_fields() {
    let full =
        LoaderMessage::FlowCounts((0..MAX_FLOWS_PER_MESSAGE as u32).map(full_flow).collect());
    assert_eq!(loader_round_trip(&full), full);
    let long = LoaderMessage::FlowCounts(vec![FlowCount {
        iface: "x".repeat(40),
        ..full_flow(1)
    }]);
    assert_eq!(
        loader_round_trip(&long),
        LoaderMessage::FlowCounts(
            vec![full_flow(1)]
                .into_iter()
                .map(|f| FlowCount {
                    iface: "x".repeat(MAX_IFACE_BYTES),
                    ..f
                })
                .collect()
        )
    );
    let over = vec![full_flow(0); MAX_FLOWS_PER_MESSAGE + 1];
    assert!(matches!(
        LoaderMessage::FlowCounts(over).encode(),
        Err(ControlError::TooMany { field: "flows", .. })
    ));
    // An address that is not 16 bytes, a direction that does not exist: typed errors.
    let short = raw_loader(|m| {
        let mut f = m.init_flow_counts().init_flows(1).get(0);
        f.set_src_addr(&[1, 2, 3, 4]);
        f.set_dst_addr(&[0; 16]);
    });
    assert!(matches!(
        LoaderMessage::decode(&short),
        Err(ControlError::Decode {
            field: "flows.src_addr",
            ..
        })
    ));
    let direction = raw_loader(|m| {
        let mut f = m.init_flow_counts().init_flows(1).get(0);
        f.set_src_addr(&[0; 16]);
        f.set_dst_addr(&[0; 16]);
        f.set_direction(7);
    });
    assert!(matches!(
        LoaderMessage::decode(&direction),
        Err(ControlError::Decode {
            field: "flows.direction",
            ..
        })
    ));
}

#[test]
fn process_usage_round_trips_full() {
    let usage: Vec<ProcessUsage> = (0..MAX_USAGE_PER_MESSAGE as u32)
        .map(|pid| ProcessUsage {
            pid,
            parent_pid: u32::MAX,
            uid: u32::MAX,
            cpu_user_ns: u64::MAX,
            cpu_system_ns: u64::MAX,
            memory_rss: u64::MAX,
            memory_virtual: u64::MAX,
            disk_read_bytes: u64::MAX,
            disk_write_bytes: u64::MAX,
            net_receive_bytes: u64::MAX,
            net_transmit_bytes: u64::MAX,
            sampled_at_ns: u64::MAX,
        })
        .collect();
    let m = LoaderMessage::ProcessUsage(usage);
    assert_eq!(loader_round_trip(&m), m);
    assert!(matches!(
        LoaderMessage::ProcessUsage(vec![ProcessUsage::default(); MAX_USAGE_PER_MESSAGE + 1])
            .encode(),
        Err(ControlError::TooMany {
            field: "processes",
            ..
        })
    ));
}
