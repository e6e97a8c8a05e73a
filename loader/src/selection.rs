//! Which processes to instrument: by listening port (`open_port`), by executable path glob
//! (`auto_target_exe`) or by pid. Reads only `/proc`; never payload bytes.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
};

use sonde_config::Config;
use sonde_plumbing::proc_status::ProcStatus;
use sonde_schema::control::ProcessRecord;

/// The selection criteria, from configuration.
pub struct Selector<'a> {
    config: &'a Config,
    own_pid: u32,
}

impl<'a> Selector<'a> {
    pub fn new(config: &'a Config) -> Self {
        Selector {
            config,
            own_pid: std::process::id(),
        }
    }

    /// Every live process the configuration selects, with the reason.
    pub fn scan(&self) -> BTreeMap<u32, ProcessRecord> {
        let mut out = BTreeMap::new();
        let listening = match &self.config.open_port {
            Some(ports) => listening_inodes(|p| ports.contains(p)),
            None => BTreeMap::new(),
        };
        for pid in all_pids() {
            if let Some(reason) = self.reason_for(pid, &listening)
                && let Some(meta) = read_record(pid, reason)
            {
                out.insert(pid, meta);
            }
        }
        out
    }

    /// Checks one process (after an exec or fork notice).
    pub fn check(&self, pid: u32) -> Option<ProcessRecord> {
        let listening = match &self.config.open_port {
            Some(ports) => listening_inodes(|p| ports.contains(p)),
            None => BTreeMap::new(),
        };
        let reason = self.reason_for(pid, &listening)?;
        read_record(pid, reason)
    }

    fn reason_for(&self, pid: u32, listening: &BTreeMap<u64, u16>) -> Option<String> {
        if pid == self.own_pid || !is_process(pid) {
            return None;
        }
        if self.config.target_pids.contains(&pid) {
            return Some("pid".into());
        }
        if let Some(glob) = &self.config.auto_target_exe
            && let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe"))
            && glob.is_match(&exe.to_string_lossy())
        {
            return Some(format!("exe {}", glob.pattern));
        }
        if !listening.is_empty()
            && let Some(port) = socket_inodes(pid).iter().find_map(|i| listening.get(i))
        {
            return Some(format!("port {port}"));
        }
        None
    }
}

/// True for a thread-group leader (a process, not a thread).
pub fn is_process(pid: u32) -> bool {
    ProcStatus::of(pid).is_ok_and(|status| status.tgid == pid)
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Socket inodes held by a process.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let link = fs::read_link(e.ok()?.path()).ok()?;
        let link = link.to_str()?;
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Inodes of TCP sockets in LISTEN state whose local port passes `wanted`, mapped to the port.
fn listening_inodes(wanted: impl Fn(u16) -> bool) -> BTreeMap<u64, u16> {
    let mut out = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for (port, inode) in parse_listeners(&text) {
            if wanted(port) {
                out.insert(inode, port);
            }
        }
    }
    out
}

/// Parses `/proc/net/tcp{,6}`: (local port, inode) of every LISTEN (state 0A) socket.
pub fn parse_listeners(text: &str) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

fn read_record(pid: u32, reason: String) -> Option<ProcessRecord> {
    let exe_path = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()?
        .to_string_lossy()
        .into_owned();
    let cmdline: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let service_name = service_name_for(&exe_path);
    Some(ProcessRecord {
        pid,
        exe_path,
        cmdline,
        service_name,
        reason,
    })
}

/// The default service name: the executable's file name, without a " (deleted)" suffix.
pub fn service_name_for(exe_path: &str) -> String {
    let base = exe_path.rsplit('/').next().unwrap_or(exe_path);
    base.trim_end_matches(" (deleted)").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_sockets_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listeners(text), vec![(8080, 12345)]);
    }

    #[test]
    fn service_names() {
        assert_eq!(service_name_for("/usr/sbin/nginx"), "nginx");
        assert_eq!(
            service_name_for("/usr/bin/python3.11 (deleted)"),
            "python3.11"
        );
    }

    #[test]
    fn a_process_is_a_thread_group_leader() {
        assert!(is_process(std::process::id()));
        // A live thread's /proc entry reads, but its Tgid is the process's.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap().as_raw() as u32;
        assert!(!is_process(tid));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert!(!is_process(u32::MAX));
    }

    #[test]
    fn finds_own_listener_by_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inodes = listening_inodes(|p| p == port);
        assert_eq!(inodes.len(), 1);
        let mine = socket_inodes(std::process::id());
        assert!(inodes.keys().all(|i| mine.contains(i)));
    }
}
