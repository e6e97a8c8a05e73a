//! The privileged phase: everything the loader does while it still holds its start-up
//! capabilities, as one linear sequence ([`start`]), ending in the run-time capability set and
//! seccomp policy that [`crate::serve`] then lives under.

use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability};
use sonde_config::Config;
use tracing::{info, warn};

use crate::{
    audit,
    consumer::ConsumerGuard,
    control::{ControlListener, PeerPolicy},
    heap,
    identity::{ProcessorIdentity, resolve_processor},
    kernel_layout, privileges,
    probes::{ProbeSizes, Probes},
    processor_config, sandbox,
    supervisor::ProcessorSpec,
};

/// How the loader was started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Single-host mode: start and supervise `sonde-processor` as the configured user.
    pub spawn_processor: bool,
    /// What the processor `sonde` starts reads on its standard input (it may not be allowed
    /// to read the file): the secret variables' block, then the file's text unchanged.
    pub processor_config: String,
}

/// What the privileged phase leaves for the unprivileged one: attached programs, the ring's
/// positions, the bound control socket and who may connect to it (split deployments), and
/// (single-host mode) the processor to start, which gets a socketpair instead of a path.
pub struct Started {
    pub probes: Probes,
    pub consumer: ConsumerGuard,
    pub listener: Option<ControlListener>,
    pub policy: PeerPolicy,
    /// The capabilities still held, by name (for the log and the status file).
    pub kept_capabilities: Vec<String>,
    /// Single-host mode: how to start the processor.
    pub processor: Option<ProcessorSpec>,
}

/// Capabilities the loader needs in its effective set at start-up; their absence is reported
/// by name before anything is attempted.
const STARTUP_CAPABILITIES: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_PERFMON];

/// The privileged phase, in order. Each step runs with what the previous ones left; after the
/// last one the loader holds only its run-time capabilities under its run-time seccomp policy.
pub fn start(config: &Config, options: &RunOptions) -> Result<Started> {
    // Before anything large is allocated and freed (see `heap`).
    heap::fix_thresholds();
    // 1. Refuse at once, naming what is missing, rather than fail half-way in the kernel.
    check_startup_capabilities()?;
    if config.ebpf.context_propagation == sonde_config::ContextPropagation::Headers {
        check_net_admin()?;
    }
    if !config.has_selection() {
        warn!(
            "no process selected: set open_port / BEYLA_OPEN_PORT, auto_target_exe / BEYLA_AUTO_TARGET_EXE, target_pids or discovery.instrument"
        );
    }

    // 2. Who the processor is: the control socket's owner, the peer check, the user
    //    single-host mode starts it as.
    let identity = resolve_processor(&config.processor.user, config.processor.group.as_deref())?;
    let processor = options
        .spawn_processor
        .then(|| supervised_processor(config, identity, options))
        .transpose()?;
    // Single host started as root: the user the loader becomes once the programs are
    // attached (checked now, before anything is attached).
    let loader_user = match &processor {
        Some(spec) if nix::unistd::geteuid().is_root() => {
            let user = privileges::LoaderUser::resolve(&config.loader_user, spec.uid)?;
            if user.uid == 0 {
                warn!(
                    "loader.user is root: sonde keeps uid 0 after start-up (insecure; --audit flags it)"
                );
                None
            } else {
                Some(user)
            }
        }
        _ => None,
    };

    // 3. Tracefs, where the tracepoint formats are read (mounted only if missing).
    if kernel_layout::ensure_tracefs()? {
        info!(path = kernel_layout::TRACEFS, "mounted tracefs");
    }

    // 4. Load and attach the kernel programs (CAP_BPF, CAP_PERFMON).
    let probes =
        Probes::load(&ProbeSizes::for_config(config)).context("loading kernel programs")?;
    info!(
        ring_buffer_bytes = config.ebpf.ring_buffer_bytes,
        max_connections = config.ebpf.max_connections,
        close_filter_slots = sonde_schema::conn_slots(config.ebpf.max_connections),
        "kernel programs attached"
    );

    // Loading parsed the kernel's BTF (aya's relocations, then the BTF tracepoints' attach)
    // and the object file: return that heap before anything else is mapped.
    heap::trim();

    // 5. Map the ring's consumer page (read-write) and producer page (read-only): before each
    //    hand-over the consumer position is checked and, if a processor parked it, reset.
    let consumer = ConsumerGuard::map(
        probes.events_fd().context("the ring buffer fd")?.as_fd(),
        config.ebpf.ring_buffer_bytes,
    )?;

    // 6. Split deployments: bind the control socket and hand it to the processor's identity
    //    (CAP_CHOWN). Single host has no socket path: each processor it starts gets its own
    //    socketpair; the status file for --audit still lives in the socket's directory.
    let mut policy = PeerPolicy::for_processor(
        identity,
        &config.processor.allowed_uids,
        config.processor.group.is_some(),
    );
    let listener = if options.spawn_processor {
        ensure_status_dir(&config.control_socket)?;
        None
    } else {
        policy.exe = expected_executable(config)?;
        policy.cgroup = config.processor.cgroup.clone();
        let listener = ControlListener::bind(&config.control_socket, identity)?;
        info!(socket = %config.control_socket.display(), allowed_uids = ?policy.uids, allowed_gid = ?policy.gid, executable_checked = policy.exe.is_some(), cgroup_required = ?policy.cgroup, "control socket listening");
        Some(listener)
    };
    // The status file is opened now and rewritten in place: once the loader left uid 0 it may
    // not create files in that directory.
    audit::open_status_file(&audit::status_path(&config.control_socket))?;

    // 7. Drop to the run-time capabilities, from every set; single host started as root also
    //    leaves uid 0 for loader.user, keeping exactly those capabilities.
    let keep = privileges::runtime_capabilities(options.spawn_processor);
    let kept_capabilities = privileges::drop_to(&keep).context("dropping capabilities")?;
    if let Some(user) = loader_user {
        privileges::switch_user(user, &keep).with_context(|| {
            format!(
                "switching to loader.user {:?} (uid {}, gid {})",
                config.loader_user, user.uid, user.gid
            )
        })?;
        info!(
            user = config.loader_user,
            uid = user.uid,
            gid = user.gid,
            "left uid 0"
        );
    }
    info!(capabilities = ?kept_capabilities, "dropped to run-time capabilities");

    // 8. Stop on SIGINT/SIGTERM (before the seccomp policy, which need not allow sigaction).
    sonde_plumbing::stop::install()?;

    // 9. The run-time seccomp policy: from here on no loading, attaching or mounting. Single
    //    host first pins id changes to the processor's ids.
    let mut filters = Vec::new();
    if let Some(spec) = &processor {
        filters.push(sandbox::apply_setid_filter(spec.uid, spec.gid)?);
    }
    filters.extend(
        sandbox::apply_runtime_policy(options.spawn_processor, probes.tls_active())
            .context("installing the run-time seccomp policy")?,
    );
    info!(?filters, "run-time seccomp policy installed");

    // 10. What the rest of start-up freed, too: the loader runs in what it keeps.
    heap::trim();

    Ok(Started {
        probes,
        consumer,
        listener,
        policy,
        kept_capabilities,
        processor,
    })
}

/// The processor binary's (device, inode) when `processor.binary` is configured: a split
/// deployment's peers must then run that file.
fn expected_executable(config: &Config) -> Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let Some(binary) = &config.processor.binary else {
        return Ok(None);
    };
    let meta = std::fs::metadata(binary).with_context(|| {
        format!(
            "processor.binary {}: the control socket admits only peers running it",
            binary.display()
        )
    })?;
    Ok(Some((meta.dev(), meta.ino())))
}

/// Single host: the directory of the status file `--audit` reads (created 0755 when
/// missing, as the control socket's was).
fn ensure_status_dir(control_socket: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = control_socket.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

fn check_startup_capabilities() -> Result<()> {
    let effective =
        caps::read(None, CapSet::Effective).context("reading effective capabilities")?;
    let missing: Vec<String> = STARTUP_CAPABILITIES
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "sonde-loader lacks {} (needed to load and attach the kernel programs); run it as root or grant them (systemd AmbientCapabilities=, Kubernetes capabilities.add)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// `ebpf.context_propagation: headers` creates a socket map and attaches cgroup `sock_ops`
/// and `sk_msg` programs, which the kernel allows only with `CAP_NET_ADMIN`.
fn check_net_admin() -> Result<()> {
    let effective =
        caps::read(None, CapSet::Effective).context("reading effective capabilities")?;
    if !effective.contains(&Capability::CAP_NET_ADMIN) {
        bail!(
            "ebpf.context_propagation: headers needs CAP_NET_ADMIN at start-up (the socket map and the cgroup sock_ops/sk_msg programs); grant it (systemd AmbientCapabilities=CAP_NET_ADMIN, Kubernetes capabilities.add: [NET_ADMIN]) or set ebpf.context_propagation: disabled"
        );
    }
    Ok(())
}

/// The processor single-host mode starts: it needs a user to start it as.
fn supervised_processor(
    config: &Config,
    identity: ProcessorIdentity,
    options: &RunOptions,
) -> Result<ProcessorSpec> {
    let ProcessorIdentity::User { uid, gid } = identity else {
        bail!(
            "processor.user \"*\" (any user of processor.group) is for a processor started separately; single-host mode needs a user to start it as"
        );
    };
    Ok(processor_config::supervised(
        config,
        uid,
        gid,
        &options.processor_config,
    ))
}
