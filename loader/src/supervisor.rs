//! Single-host mode: the loader starts `sonde-processor` as an unprivileged user and restarts
//! it with backoff when it dies. The child sheds everything before `execve`: every capability
//! set (bounding and ambient included), supplementary groups, gid and uid, then sets
//! `NO_NEW_PRIVS`; its environment is rebuilt from an allowlist and inherited fds are closed,
//! but for its end of the control `socketpair` made for this child alone (`--control-fd`):
//! single-host mode has no control socket path another process could connect to.
//! A step that fails is named in the supervisor's log ([`DropError`]), as Firecracker's jailer
//! names its steps.

use std::{
    ffi::OsString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracing::{info, warn};

/// How to start the processor.
#[derive(Debug, Clone)]
pub struct ProcessorSpec {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    pub uid: u32,
    pub gid: u32,
    /// Environment passed through (configuration variables only).
    pub env: Vec<(String, String)>,
    /// The configuration file's text, written to the processor's standard input.
    pub config_yaml: String,
}

/// Runs the processor binary once to completion (a configuration pass), dropping to
/// `spec.uid`/`spec.gid` as a supervised processor does when `drop_privileges`; killed after
/// `timeout`.
pub fn run_once(
    spec: &ProcessorSpec,
    drop_privileges: bool,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let binary =
        File::open(&spec.binary).with_context(|| format!("opening {}", spec.binary.display()))?;
    let mut child = spawn(spec, Some(&binary), drop_privileges, None)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the processor")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("no answer within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where the processor finds the Kubernetes API and which node's pods it watches (in-cluster
/// service address, a kubeconfig path, the node name). None is a secret: the token stays in
/// its file, which the processor reads itself.
const KUBERNETES_VARS: [&str; 5] = [
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBECONFIG",
    "K8S_NODE_NAME",
    "NODE_NAME",
];

/// Environment variables a processor may inherit: configuration, nothing else, and no secret
/// (`sonde_config::SECRET_ENV_VARS`, the OTLP headers: they reach the processor on its
/// standard input, `sonde_config::with_secret_env`, since any process of its uid could read
/// its `/proc/<pid>/environ`).
pub fn processor_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("BEYLA_")
                || k.starts_with("OTEL_")
                || k.starts_with("SONDE_")
                || KUBERNETES_VARS.contains(&k.as_str())
                || k == "RUST_LOG")
                && !sonde_config::is_secret_var(k)
        })
        .collect()
}

/// The processor's exit code for a configuration error (as the loader's own).
const EXIT_CONFIG: i32 = 2;
/// Start failures in a row, each the same, after which the supervisor gives up.
pub const GIVE_UP_AFTER: u32 = 5;
/// A processor that dies sooner than this after its start failed to start.
pub const START_FAILURE_WITHIN: Duration = Duration::from_secs(10);

/// Why the supervisor stopped restarting the processor: a configuration error (its exit code
/// 2, which a restart cannot fix) or the same start failure [`GIVE_UP_AFTER`] times in a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GaveUp {
    #[error(
        "the processor rejected its configuration (exit status 2; its message is above); \
         not restarting it"
    )]
    Configuration,
    #[error(
        "the processor failed to start {count} times in a row, each time the same way \
         ({failure}, within {within_s} s of its start); giving up (its own message is above)",
        within_s = START_FAILURE_WITHIN.as_secs()
    )]
    Repeated { count: u32, failure: String },
}

/// Consecutive start failures: identical ones add up, anything else starts a new streak.
#[derive(Debug, Default)]
pub struct FailureStreak {
    last: Option<String>,
    count: u32,
}

impl FailureStreak {
    /// Records how a processor ended: `exit_code` (None: killed by a signal, or it never
    /// started), `failure` as the log names it, `ran` how long it ran. Some when it is time to
    /// give up.
    pub fn record(
        &mut self,
        exit_code: Option<i32>,
        failure: &str,
        ran: Duration,
    ) -> Option<GaveUp> {
        if ran >= START_FAILURE_WITHIN {
            // It started; a later death is not a start failure.
            self.last = None;
            self.count = 0;
            return None;
        }
        if exit_code == Some(EXIT_CONFIG) {
            return Some(GaveUp::Configuration);
        }
        if self.last.as_deref() == Some(failure) {
            self.count += 1;
        } else {
            self.last = Some(failure.to_string());
            self.count = 1;
        }
        (self.count >= GIVE_UP_AFTER).then(|| GaveUp::Repeated {
            count: self.count,
            failure: failure.to_string(),
        })
    }
}

/// Set once when the supervisor gives up; the loader's main loop stops and `cli` exits with
/// this error (logged once, there).
static GAVE_UP: std::sync::Mutex<Option<GaveUp>> = std::sync::Mutex::new(None);

/// Why the supervisor gave up, if it did.
pub fn gave_up() -> Option<GaveUp> {
    GAVE_UP.lock().ok().and_then(|g| g.clone())
}

fn give_up(why: GaveUp) {
    if let Ok(mut g) = GAVE_UP.lock() {
        g.get_or_insert(why);
    }
    sonde_plumbing::stop::request();
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A processor that ran this long is considered healthy: the next restart starts fast again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

pub struct Supervisor {
    spec: ProcessorSpec,
    /// The processor binary, opened once while the loader could still read it. The child
    /// execs it through `/proc/self/fd`, so the unprivileged user needs execute permission on
    /// the file only, not search permission on every directory above it (a build tree under a
    /// 0700 directory, a root-only install prefix).
    binary: Option<File>,
    child: Option<(Child, Instant)>,
    backoff: Duration,
    next_start: Option<Instant>,
    spawned: u64,
    pub restarts: u64,
    failures: FailureStreak,
    /// The running child completed its handshake: if a signal ends it later (another process
    /// of its uid killed it, traffic crashed it: `panic = "abort"`), that is no start failure
    /// and it is restarted, never given up on. An exit with a status (a port taken, a bad
    /// endpoint) still counts.
    child_connected: bool,
}

impl Supervisor {
    pub fn new(spec: ProcessorSpec) -> Self {
        let binary = match File::open(&spec.binary) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(binary = %spec.binary.display(), error = %e, "cannot open the processor binary; will exec it by path");
                None
            }
        };
        Supervisor {
            spec,
            binary,
            child: None,
            backoff: BACKOFF_START,
            next_start: Some(Instant::now()),
            spawned: 0,
            restarts: 0,
            failures: FailureStreak::default(),
            child_connected: false,
        }
    }

    /// The processor `pid` completed its handshake.
    pub fn connected(&mut self, pid: u32) {
        if self.child.as_ref().is_some_and(|(c, _)| c.id() == pid) {
            self.child_connected = true;
        }
    }

    /// The running processor's pid.
    pub fn child_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|(c, _)| c.id())
    }

    /// Kills the running processor (it broke the control protocol); `tick` reaps and restarts
    /// it.
    pub fn kill(&mut self, why: &str) {
        if let Some((child, _)) = &mut self.child {
            warn!(pid = child.id(), why, "killing the processor");
            let _ = child.kill();
        }
    }

    /// Reaps a dead processor and starts one when due. Call from the main loop. A processor
    /// started now comes with the loader's end of its control socketpair (non-blocking) and its
    /// pid.
    pub fn tick(&mut self) -> Option<(OwnedFd, u32)> {
        if let Some((child, started)) = &mut self.child {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let ran = started.elapsed();
                    if ran >= HEALTHY_AFTER {
                        self.backoff = BACKOFF_START;
                    }
                    let pid = child.id();
                    self.child = None;
                    let killed_after_connecting =
                        std::mem::take(&mut self.child_connected) && status.code().is_none();
                    if killed_after_connecting {
                        self.failures = FailureStreak::default();
                    } else if let Some(why) =
                        self.failures
                            .record(status.code(), &format!("exited with {status}"), ran)
                    {
                        warn!(pid, %status, ran_ms = ran.as_millis() as u64, "processor exited");
                        give_up(why);
                        return None;
                    }
                    warn!(pid, %status, ran_ms = ran.as_millis() as u64, restart_in_ms = self.backoff.as_millis() as u64, "processor exited; restarting");
                    self.next_start = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "waiting for the processor failed"),
            }
            return None;
        }
        if self.next_start.is_some_and(|t| Instant::now() >= t) {
            match spawn_with_control(&self.spec, self.binary.as_ref()) {
                Ok((child, conn)) => {
                    info!(pid = child.id(), uid = self.spec.uid, gid = self.spec.gid, binary = %self.spec.binary.display(), "processor started");
                    if self.spawned > 0 {
                        self.restarts += 1;
                    }
                    self.spawned += 1;
                    let pid = child.id();
                    self.child = Some((child, Instant::now()));
                    self.next_start = None;
                    return Some((conn, pid));
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if let Some(why) = self.failures.record(None, &error, Duration::ZERO) {
                        give_up(why);
                        self.next_start = None;
                        return None;
                    }
                    warn!(
                        error,
                        retry_in_ms = self.backoff.as_millis() as u64,
                        "starting the processor failed"
                    );
                    self.next_start = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        None
    }

    /// Stops the processor: SIGTERM, then SIGKILL after two seconds.
    pub fn stop(&mut self) {
        let Some((mut child, _)) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts a supervised processor with a fresh control `socketpair`: the child's end is the
/// only fd it inherits beyond stdio (`--control-fd N`), the loader keeps the other end.
fn spawn_with_control(spec: &ProcessorSpec, binary: Option<&File>) -> Result<(Child, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("creating the control socketpair")?;
    let child = spawn(spec, binary, true, Some(theirs.as_raw_fd()))?;
    // The child has its copy; the loader's copy of that end closes here.
    drop(theirs);
    Ok((child, ours))
}

fn spawn(
    spec: &ProcessorSpec,
    binary: Option<&File>,
    drop_privileges: bool,
    control: Option<RawFd>,
) -> Result<Child> {
    let mut cmd = match binary {
        // The fd is close-on-exec: execve resolves the path before it closes such fds.
        Some(f) => Command::new(format!("/proc/self/fd/{}", f.as_raw_fd())),
        None => Command::new(&spec.binary),
    };
    // A pipe holds the configuration (far below the pipe buffer size), so writing it before
    // the child runs cannot block.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("creating the configuration pipe")?;
    std::io::Write::write_all(&mut File::from(write_end), spec.config_yaml.as_bytes())
        .context("writing the configuration pipe")?;
    cmd.stdin(std::process::Stdio::from(read_end));
    cmd.arg0("sonde-processor").args(&spec.args);
    if let Some(fd) = control {
        cmd.arg("--control-fd").arg(fd.to_string());
    }
    cmd.env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
    let (uid, gid) = (spec.uid, spec.gid);
    // The child writes the number of a failed step here; std's own channel carries only the
    // errno.
    let (report_rx, report_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the report pipe")?;
    let report = report_tx.as_raw_fd();
    if drop_privileges {
        // SAFETY: the closure runs in the forked child before exec and only makes raw system
        // calls (no allocation, no locks), which is what pre_exec requires.
        unsafe {
            cmd.pre_exec(move || drop_everything(uid, gid, report, control.unwrap_or(-1)));
        }
    }
    let spawned = cmd.spawn();
    // With the child gone (exec'd or exited), this was the last write end: the read below
    // sees the child's report or end of file, never blocks.
    drop(report_tx);
    spawned.map_err(|source| {
        let mut step = [0u8; 1];
        let failed_step = match nix::unistd::read(&report_rx, &mut step) {
            Ok(1) => DropError::from_step(step[0], source),
            _ => Err(source),
        };
        let e = match failed_step {
            Ok(drop_error) => anyhow::Error::new(drop_error).context("dropping privileges"),
            Err(source) => anyhow::Error::new(source),
        };
        e.context(format!("spawning {}", spec.binary.display()))
    })
}

/// The step of the child's privilege drop that failed, with the system call's error. Steps
/// run in this order.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("close_range (marking inherited fds close-on-exec) failed")]
    CloseRange(#[source] io::Error),
    #[error("PR_CAPBSET_DROP (emptying the bounding set) failed")]
    BoundingSet(#[source] io::Error),
    #[error("PR_CAP_AMBIENT_CLEAR_ALL (clearing the ambient set) failed")]
    AmbientSet(#[source] io::Error),
    #[error("setgroups failed")]
    Setgroups(#[source] io::Error),
    #[error("setresgid failed")]
    Setresgid(#[source] io::Error),
    #[error("setresuid failed")]
    Setresuid(#[source] io::Error),
    #[error("capset (clearing the effective, permitted and inheritable sets) failed")]
    Capset(#[source] io::Error),
    #[error("PR_SET_NO_NEW_PRIVS failed")]
    NoNewPrivs(#[source] io::Error),
    #[error("clearing close-on-exec on the control socket failed")]
    ControlFd(#[source] io::Error),
}

impl DropError {
    /// Every step, indexed by the number the child reports.
    const STEPS: [fn(io::Error) -> DropError; 9] = [
        DropError::CloseRange,
        DropError::BoundingSet,
        DropError::AmbientSet,
        DropError::Setgroups,
        DropError::Setresgid,
        DropError::Setresuid,
        DropError::Capset,
        DropError::NoNewPrivs,
        DropError::ControlFd,
    ];

    /// The step's number (its index in `STEPS`) and the system call's error.
    fn into_parts(self) -> (u8, io::Error) {
        match self {
            DropError::CloseRange(e) => (0, e),
            DropError::BoundingSet(e) => (1, e),
            DropError::AmbientSet(e) => (2, e),
            DropError::Setgroups(e) => (3, e),
            DropError::Setresgid(e) => (4, e),
            DropError::Setresuid(e) => (5, e),
            DropError::Capset(e) => (6, e),
            DropError::NoNewPrivs(e) => (7, e),
            DropError::ControlFd(e) => (8, e),
        }
    }

    /// The error for step number `step`; the plain error back for an unknown number.
    fn from_step(step: u8, source: io::Error) -> Result<DropError, io::Error> {
        match DropError::STEPS.get(usize::from(step)) {
            Some(step) => Ok(step(source)),
            None => Err(source),
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs in the child between fork and exec, so it must stay async-signal-safe: raw system
/// calls on integers and stack memory, no allocation, no locks (the loader may have other
/// threads whose locks a fork copies held). A failed step's number goes to `report`, and its
/// errno back through std's exec-error channel, so `spawn` fails naming the step.
fn drop_everything(uid: u32, gid: u32, report: RawFd, control: RawFd) -> io::Result<()> {
    drop_steps(uid, gid, control).map_err(|e| {
        let (step, source) = e.into_parts();
        // SAFETY: write(2) of one byte from the stack to a pipe fd that stays open until
        // exec; the result is ignored because nothing better can be done in the child.
        let _ = unsafe { libc::write(report, (&raw const step).cast(), 1) };
        source
    })
}

/// The privilege drop itself. Order matters: the bounding set can only be reduced while
/// CAP_SETPCAP is still held, i.e. before the uid changes. `control` (when not -1) is the one
/// fd above stdio the processor keeps.
fn drop_steps(uid: u32, gid: u32, control: RawFd) -> Result<(), DropError> {
    // SAFETY: each call below is a raw system call on plain integer arguments or on stack
    // memory that outlives the call; none allocates or touches shared state.
    unsafe {
        // Inherited fds the loader did not mark close-on-exec must not reach the processor.
        check(libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) as libc::c_int)
        .map_err(DropError::CloseRange)?;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1 {
                check(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0))
                    .map_err(DropError::BoundingSet)?;
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))
        .map_err(DropError::AmbientSet)?;
        // No supplementary groups (the primary gid is set below). An empty list is also all
        // the single-host loader's seccomp filter lets setgroups set (sandbox::setid_filter).
        check(libc::setgroups(0, std::ptr::null())).map_err(DropError::Setgroups)?;
        check(libc::setresgid(gid, gid, gid)).map_err(DropError::Setresgid)?;
        check(libc::setresuid(uid, uid, uid)).map_err(DropError::Setresuid)?;
        // setresuid away from 0 clears permitted/effective; clear inheritable explicitly too.
        let mut header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) as libc::c_int)
        .map_err(DropError::Capset)?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)).map_err(DropError::NoNewPrivs)?;
        // Exactly the control socket's end crosses exec.
        if control >= 0 {
            check(libc::fcntl(control, libc::F_SETFD, 0)).map_err(DropError::ControlFd)?;
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_gives_up_on_repeated_identical_start_failures() {
        let quick = Duration::from_millis(50);
        let mut streak = FailureStreak::default();
        for _ in 1..GIVE_UP_AFTER {
            assert_eq!(
                streak.record(Some(1), "exited with exit status: 1", quick),
                None
            );
        }
        let why = streak
            .record(Some(1), "exited with exit status: 1", quick)
            .expect("gives up");
        assert_eq!(
            why,
            GaveUp::Repeated {
                count: GIVE_UP_AFTER,
                failure: "exited with exit status: 1".into()
            }
        );
        assert!(why.to_string().contains("5 times in a row"), "{why}");

        // A different failure starts a new streak; so does a processor that ran a while.
        let mut streak = FailureStreak::default();
        for i in 0..3 * GIVE_UP_AFTER {
            let failure = if i % 2 == 0 { "a" } else { "b" };
            assert_eq!(streak.record(Some(1), failure, quick), None);
        }
        let mut streak = FailureStreak::default();
        for i in 0..3 * GIVE_UP_AFTER {
            let ran = if i % 4 == 3 {
                START_FAILURE_WITHIN
            } else {
                quick
            };
            assert_eq!(streak.record(Some(1), "a", ran), None);
        }
        // A configuration error (exit code 2) at start: at once.
        let mut streak = FailureStreak::default();
        assert_eq!(
            streak.record(Some(2), "exited with exit status: 2", quick),
            Some(GaveUp::Configuration)
        );
        // ... but not from a processor that had been running.
        assert_eq!(
            streak.record(Some(2), "exited with exit status: 2", START_FAILURE_WITHIN),
            None
        );
        // Spawn errors (no exit code) count the same way.
        let mut streak = FailureStreak::default();
        let outcomes: Vec<_> = (0..GIVE_UP_AFTER)
            .map(|_| streak.record(None, "spawning x: No such file", Duration::ZERO))
            .collect();
        assert!(outcomes[..4].iter().all(Option::is_none));
        assert!(outcomes[4].is_some());
    }

    #[test]
    fn step_numbers_round_trip() {
        for step in 0..DropError::STEPS.len() as u8 {
            let e = DropError::from_step(step, io::Error::from_raw_os_error(libc::EPERM))
                .expect("known step");
            let (back, source) = e.into_parts();
            assert_eq!(back, step);
            assert_eq!(source.raw_os_error(), Some(libc::EPERM));
        }
        assert!(DropError::from_step(9, io::Error::from_raw_os_error(libc::EPERM)).is_err());
    }

    /// A child that cannot drop privileges: spawned from a thread without CAP_SETPCAP in its
    /// effective set (capabilities are per thread, and fork copies the calling thread's), so
    /// emptying the bounding set fails, and the error names that step.
    #[test]
    fn a_failed_step_is_named_in_the_spawn_error() {
        if caps::read(None, caps::CapSet::Bounding).is_ok_and(|b| b.is_empty()) {
            eprintln!("skipped: the bounding set is already empty");
            return;
        }
        let spec = ProcessorSpec {
            binary: "/bin/true".into(),
            args: Vec::new(),
            uid: 65534,
            gid: 65534,
            env: Vec::new(),
            config_yaml: String::new(),
        };
        let error = std::thread::spawn(move || {
            caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
                .expect("dropping CAP_SETPCAP from this thread");
            spawn(&spec, None, true, None).map(|mut child| child.wait())
        })
        .join()
        .expect("thread")
        .expect_err("the child cannot empty its bounding set");
        let text = format!("{error:#}");
        assert!(
            text.contains("dropping privileges: PR_CAPBSET_DROP (emptying the bounding set) failed: Operation not permitted"),
            "{text}"
        );
        assert!(matches!(
            error.downcast_ref::<DropError>(),
            Some(DropError::BoundingSet(_))
        ));
    }
}
