//! The image deploy/kubernetes/sonde.yaml runs, built for real: deploy/container/build.sh
//! stages a root filesystem from the workspace's binaries and `podman build`s
//! deploy/container/Containerfile (FROM scratch) into a private store of the test's own.
//! Then: the image holds exactly the expected files (the two binaries byte for byte, exactly
//! the shared libraries `ldd` names for them, Debian's Mozilla CA bundle without the host's
//! local CAs, passwd/group naming root and uid/gid 61532) and no shell; its configured user
//! is the processor's non-root one; both binaries run inside it (so the library closure is
//! complete) with no network; the processor started with the image's defaults runs as uid/gid
//! 61532 with no capability; the OCI archive is written. The image's size is printed.
//!
//! Needs podman and runc (Debian: `apt-get install podman runc`; scripts/setup.sh installs
//! them). Containers run with runc because Debian 12's crun (1.8) refuses a hybrid cgroup
//! layout, and with explicit RLIMIT_NOFILE/NPROC because podman otherwise raises both to the
//! maximum, which needs CAP_SYS_RESOURCE.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{binary, peers::run_bounded, repo_root};

const PROCESSOR_UID: u32 = 61532;
const BINARIES: [&str; 2] = ["sonde-loader", "sonde-processor"];
const SHELLS: [&str; 9] = [
    "sh", "bash", "dash", "ash", "zsh", "ksh", "csh", "busybox", "toybox",
];

fn workspace_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let mut in_package = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version") {
            return v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_string();
        }
    }
    panic!("no [workspace.package] version");
}

/// podman against the test's private store (`CONTAINERS_STORAGE_CONF`), never the machine's.
struct Podman {
    storage_conf: PathBuf,
    /// TMPDIR for podman and build.sh (podman build stages layers there, default /var/tmp).
    tmpdir: PathBuf,
}

impl Podman {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("TMPDIR", &self.tmpdir)
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_bounded(
            &format!("podman {}", args.join(" ")),
            &mut self.command(args),
            Duration::from_secs(120),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d` as this machine allows it (runc, bounded rlimits, no network): the
    /// container's id, or podman's output when it could not start it.
    fn start(&self, extra: &[&str], image: &str, command: &[&str]) -> Result<String, Output> {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(command);
        let out = self.run(&args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(out)
        }
    }

    /// Runs `command` in a container of `image` to its end (`podman run --rm`). Here each
    /// run takes about 20 s: podman waits for its conmon to be reaped, and this machine's init
    /// reaps orphans late ("Exceeded conmon timeout" in `--log-level debug`).
    fn container(&self, extra: &[&str], image: &str, command: &[&str]) -> Ran {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(command);
        let out = self.run(&args);
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What a command run in a container did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Removes a container however the test ends.
struct Removed<'a>(&'a Podman, String);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["rm", "-f", "-t", "0", &self.1]);
    }
}

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool} --version` does not run: the container image test needs Debian's podman and \
         runc (`apt-get install --no-install-recommends podman runc`; scripts/setup.sh installs \
         them)"
    );
}

/// The shared libraries `ldd` names for `binary` (the interpreter included), vDSO excluded.
fn ldd_closure(binary: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("not found"), "{text}");
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest,
                None => line,
            };
            let path = path.split(" (").next().unwrap_or("");
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Every non-directory entry under `root`, as an absolute path in the image, with its metadata.
fn walk(root: &Path) -> BTreeMap<String, std::fs::Metadata> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, std::fs::Metadata>) {
        for entry in std::fs::read_dir(dir).expect("image dir") {
            let entry = entry.expect("entry");
            let meta = std::fs::symlink_metadata(entry.path()).expect("metadata");
            if meta.is_dir() {
                go(root, &entry.path(), out);
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_owned();
                out.insert(format!("/{}", rel.display()), meta);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Unmounts the image's root filesystem however the test ends.
struct Mounted<'a> {
    podman: &'a Podman,
    image: String,
    path: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["image", "unmount", &self.image]);
    }
}

/// The test's scratch directory (build context, podman's store, the OCI archive) on tmpfs
/// (/dev/shm), removed on drop: podman's state database fsyncs on every container start and
/// removal, and on a disk busy with other builds each of those waits seconds.
struct MemoryDir(PathBuf);

impl MemoryDir {
    fn new() -> MemoryDir {
        let base = Path::new("/dev/shm");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("sonde-e2e-container-image-{}-{nanos}", std::process::id());
        let dir = if base.is_dir() {
            base.join(name)
        } else {
            std::env::temp_dir().join(name)
        };
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        MemoryDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for MemoryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_scratch_image_holds_exactly_the_binaries_their_libraries_and_no_shell() {
    require("podman");
    require("runc");
    let version = workspace_version();
    let tag = format!("sonde:{version}");
    let dir = MemoryDir::new();
    let storage_conf = dir.path("storage.conf");
    std::fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.path("graph").display(),
            dir.path("run").display()
        ),
    )
    .expect("storage.conf");
    // overlay, as podman defaults to (vfs would copy the whole image, 300 MB with debug
    // binaries, for every container).
    let podman = Podman {
        storage_conf,
        tmpdir: dir.path("tmp"),
    };
    std::fs::create_dir(&podman.tmpdir).expect("tmp dir");

    // The binaries the other e2e tests run (SONDE_TEST_PROFILE), so no second cargo build,
    // copied first: a build running meanwhile may replace the ones in target/.
    let binaries = dir.path("bin");
    std::fs::create_dir(&binaries).expect("bin dir");
    for name in BINARIES {
        std::fs::copy(binary(name), binaries.join(name)).expect("copying a binary");
    }
    let archive = dir.path("sonde.oci.tar");
    let started = Instant::now();
    let out = run_bounded(
        "deploy/container/build.sh",
        Command::new(repo_root().join("deploy/container/build.sh"))
            .args(["--binaries", &binaries.display().to_string()])
            .args(["--context", &dir.path("context").display().to_string()])
            .args(["--oci-archive", &archive.display().to_string()])
            .args(["--tag", &tag])
            .env("CONTAINERS_STORAGE_CONF", &podman.storage_conf)
            .env("TMPDIR", &podman.tmpdir),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "build.sh: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let build_time = started.elapsed();

    // The image's configuration: the processor's non-root user, one layer.
    let inspect: Value =
        serde_json::from_str(&podman.ok(&["image", "inspect", &tag])).expect("inspect JSON");
    let image = &inspect[0];
    let user = image["Config"]["User"].as_str().unwrap_or("");
    assert_eq!(
        user,
        format!("{PROCESSOR_UID}:{PROCESSOR_UID}"),
        "Config.User"
    );
    assert_eq!(
        image["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "one layer: {}",
        image["RootFS"]
    );
    assert_eq!(
        image["Config"]["Labels"]["org.opencontainers.image.version"].as_str(),
        Some(version.as_str())
    );
    let size = image["Size"].as_u64().expect("Size");

    // Every file of the image, and nothing else.
    let mut expected: BTreeMap<String, PathBuf> = BTreeMap::new();
    for name in BINARIES {
        let path = binaries.join(name);
        expected.insert(format!("/usr/local/bin/{name}"), path.clone());
        for lib in ldd_closure(&path) {
            let real = std::fs::canonicalize(&lib).expect("library path");
            expected.insert(lib, real);
        }
    }
    let mount = Mounted {
        path: PathBuf::from(podman.ok(&["image", "mount", &tag]).trim()),
        podman: &podman,
        image: tag.clone(),
    };
    let files = walk(&mount.path);
    let mut wanted: BTreeSet<String> = expected.keys().cloned().collect();
    wanted.extend(
        [
            "/etc/passwd",
            "/etc/group",
            "/etc/ssl/certs/ca-certificates.crt",
        ]
        .map(String::from),
    );
    let found: BTreeSet<String> = files.keys().cloned().collect();
    assert_eq!(found, wanted, "the image's files");
    for (path, meta) in &files {
        assert!(meta.is_file(), "{path} is not a regular file");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is root's");
        assert_eq!(
            meta.permissions().mode() & 0o022,
            0,
            "{path} is writable by others"
        );
        let name = path.rsplit('/').next().unwrap_or("");
        assert!(!SHELLS.contains(&name), "{path} is a shell");
    }
    for shell in SHELLS {
        for bin in ["/bin", "/usr/bin", "/sbin", "/usr/sbin"] {
            assert!(!mount.path.join(&bin[1..]).join(shell).exists());
        }
    }
    // Binaries and libraries are the host's files, byte for byte.
    for (path, source) in &expected {
        let inside = std::fs::read(mount.path.join(&path[1..])).expect("image file");
        let outside = std::fs::read(source).expect("host file");
        assert!(
            inside == outside,
            "{path} differs from {}",
            source.display()
        );
    }
    let read = |p: &str| std::fs::read_to_string(mount.path.join(p)).expect(p);
    // The CA bundle is Debian's Mozilla set (the ca-certificates package) and nothing more:
    // not this host's /etc/ssl/certs bundle, which adds its local CAs.
    let mut mozilla: Vec<PathBuf> = std::fs::read_dir("/usr/share/ca-certificates/mozilla")
        .expect("/usr/share/ca-certificates/mozilla (ca-certificates)")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    mozilla.sort();
    let bundle: String = mozilla
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("certificate"))
        .collect();
    let certs = read("etc/ssl/certs/ca-certificates.crt");
    assert!(certs == bundle, "the CA bundle is Debian's Mozilla set");
    let cert_count = certs.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(cert_count > 100, "{cert_count} certificates");
    let passwd = read("etc/passwd");
    let group = read("etc/group");
    let mut users: Vec<&str> = passwd.lines().collect();
    users.sort();
    assert_eq!(
        users,
        [
            "root:x:0:0:sonde-loader:/:/nonexistent",
            "sonde-processor:x:61532:61532:sonde-processor:/nonexistent:/nonexistent",
        ]
    );
    let mut groups: Vec<&str> = group.lines().collect();
    groups.sort();
    assert_eq!(groups, ["root:x:0:", "sonde:x:61532:"]);
    drop(mount);

    // Both binaries run inside (their library closure is complete), with no network; the
    // loader as root, as its container runs. No shell to run anything else.
    let processor = podman.container(&[], &tag, &["/usr/local/bin/sonde-processor", "--version"]);
    assert_eq!(
        processor.code,
        Some(0),
        "sonde-processor --version in the image: {}",
        processor.stderr
    );
    assert_eq!(
        processor.stdout.trim(),
        format!("sonde-processor {version}")
    );
    let loader = podman.container(
        &["--user", "0:0"],
        &tag,
        &["/usr/local/bin/sonde-loader", "--version"],
    );
    assert_eq!(
        loader.code,
        Some(0),
        "sonde-loader --version in the image: {}",
        loader.stderr
    );
    assert_eq!(loader.stdout.trim(), format!("sonde-loader {version}"));
    let shell = podman.container(&[], &tag, &["/bin/sh", "-c", "true"]);
    assert_ne!(shell.code, Some(0), "/bin/sh ran in the image");
    assert!(
        shell.stderr.contains("no such file or directory"),
        "/bin/sh: {}",
        shell.stderr
    );

    // The processor as the image starts it (its CMD, the image's USER), read-only root, with
    // the configuration mounted where the manifest mounts it: it runs as 61532:61532 with no
    // capability, waiting for a loader that is not there.
    let config_dir = dir.path("etc-sonde");
    std::fs::create_dir(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("sonde.yaml"),
        "control_socket: /run/sonde/control.sock\ntrace_printer: disabled\n",
    )
    .expect("config");
    for (p, mode) in [
        (&config_dir, 0o755),
        (&config_dir.join("sonde.yaml"), 0o644),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let volume = format!("{}:/etc/sonde:ro", config_dir.display());
    let id = podman
        .start(&["--read-only", "-v", &volume], &tag, &[])
        .unwrap_or_else(|out| {
            panic!(
                "starting the image's CMD: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let _removed = Removed(&podman, id.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let logs = podman.run(&["logs", &id]);
        let logs = String::from_utf8_lossy(&logs.stderr).into_owned()
            + &String::from_utf8_lossy(&logs.stdout);
        if logs.contains("the loader is not up yet") {
            let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", &id]);
            let pid: u32 = pid.trim().parse().expect("container pid");
            assert!(pid > 0, "the processor container is not running:\n{logs}");
            break std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        }
        assert!(
            Instant::now() < deadline,
            "the processor in the image did not start waiting for the loader:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let ids = format!("{PROCESSOR_UID} {PROCESSOR_UID} {PROCESSOR_UID} {PROCESSOR_UID}");
    assert_eq!(field("Uid:"), ids, "the processor's uids");
    assert_eq!(field("Gid:"), ids, "the processor's gids");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");

    // The OCI archive of the same image.
    let archive_size = std::fs::metadata(&archive).expect("OCI archive").len();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for entry in ["oci-layout", "index.json"] {
        assert!(listing.lines().any(|l| l == entry), "{entry} in {listing}");
    }

    println!(
        "image {tag}: {} files, {:.1} MB unpacked ({size} bytes), OCI archive {:.1} MB, \
         {cert_count} CA certificates, built in {:.1} s from {}",
        files.len(),
        size as f64 / 1e6,
        archive_size as f64 / 1e6,
        build_time.as_secs_f64(),
        binary("sonde-loader")
            .parent()
            .expect("target dir")
            .display()
    );
}
