//! Kubernetes metadata (`attributes.kubernetes`): which pod, container and owners a process
//! belongs to, from the API server, for resource attributes (`k8s.*`, `container.id`),
//! Prometheus labels and the service-name ladder.
//!
//! The processor, not the loader, talks to the API server: the loader holds no API token, and
//! the processor reaches the API under its sandbox (Landlock allows connecting to the API
//! server's port, and reading the service-account directory for token rotation). The loader
//! sends each process's container id (from its cgroup path); the processor matches it with
//! the container statuses of the pods on this node.
//!
//! Phases, as `main` runs them:
//! 1. [`prepare`], before the sandbox: decides whether metadata is on
//!    ([`Enable::Autodetect`]: when in-cluster variables or a kubeconfig are present), loads
//!    the client configuration (in-cluster service account, or the kubeconfig named by
//!    `kubeconfig_path` / `KUBECONFIG`), and says which port and files the sandbox must allow.
//! 2. [`start`], after the sandbox: a thread `sonde-kube` with a single-threaded tokio
//!    runtime runs the watchers (`watch`) into a bounded [`Store`].
//! 3. The pipeline looks processes up in the store when they are announced and whenever its
//!    generation changes: spans never wait for the API server; a process seen before its pod
//!    gets its metadata when the pod arrives (its resource is rebuilt then).
//! 4. Discovery selectors with `k8s_*` fields ([`select`]): the loader announces candidates
//!    (processes in a pod's cgroup matching the selector's other fields, not captured); the
//!    pipeline asks the loader to select those whose pod matches, and to narrow them again when
//!    it stops matching. The loader refuses anything outside its candidates.

pub mod meta;
pub mod select;
mod store;
mod watch;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
pub use meta::{K8sLabels, K8sMeta};
pub use store::{MAX_OWNERS, MAX_PODS, PodEnd, Store, StoreCounters};
use tracing::{error, info};

/// The in-cluster service-account directory (token, CA, namespace).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Variables naming this node, in order of preference (set with the downward API's
/// `spec.nodeName`); without them the host name is used (a DaemonSet pod with
/// `hostNetwork` has the node's).
pub const NODE_NAME_VARS: [&str; 2] = ["K8S_NODE_NAME", "NODE_NAME"];

/// `attributes.kubernetes.enable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enable {
    True,
    False,
    /// On when running in a cluster (`KUBERNETES_SERVICE_HOST`) or when a kubeconfig is given.
    #[default]
    Autodetect,
}

impl Enable {
    /// `true`, `false` or `autodetect` (case-insensitive).
    pub fn parse(v: &str) -> Option<Enable> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(Enable::True),
            "false" => Some(Enable::False),
            "autodetect" => Some(Enable::Autodetect),
            _ => None,
        }
    }
}

/// The settings of Kubernetes metadata (`attributes.kubernetes.*` in the processor's
/// configuration: `enable` / `BEYLA_KUBE_METADATA_ENABLE`, `cluster_name` /
/// `BEYLA_KUBE_CLUSTER_NAME`, `kubeconfig_path` / `KUBECONFIG`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub enable: Enable,
    /// `k8s.cluster.name` (`attributes.kubernetes.cluster_name`).
    pub cluster_name: Option<String>,
    /// A kubeconfig file (`attributes.kubernetes.kubeconfig_path`, else `KUBECONFIG`).
    pub kubeconfig_path: Option<PathBuf>,
}

/// Where the client configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    InCluster,
    Kubeconfig(PathBuf),
}

/// Kubernetes metadata, ready to start once the sandbox is in place.
pub struct Prepared {
    config: ::kube::Config,
    node: String,
    cluster_name: Option<String>,
    pub source: Source,
    /// The API server's TCP port (for Landlock).
    pub connect_port: u16,
    /// The API server is named by a host name (DNS over TCP needs port 53).
    pub needs_dns: bool,
    /// Files and directories the client reads after the sandbox is applied: the token file's
    /// directory (kubelet rotates the token by swapping the directory's contents), client
    /// certificate and key files.
    pub read_paths: Vec<PathBuf>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("url", &self.config.cluster_url.to_string())
            .field("node", &self.node)
            .field("source", &self.source)
            .field("connect_port", &self.connect_port)
            .finish_non_exhaustive()
    }
}

/// The node whose pods are watched: [`NODE_NAME_VARS`], else the host name.
fn node_name(get: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    NODE_NAME_VARS
        .iter()
        .find_map(|n| {
            get(n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// Phase 1 (before the sandbox): `Ok(None)` when metadata is off (`enable: false`, or
/// autodetect found neither in-cluster variables nor a kubeconfig); an error when it is
/// explicitly on and no client configuration can be loaded, or the configuration is broken.
pub fn prepare(
    settings: &Settings,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Prepared>> {
    let in_cluster = get("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.trim().is_empty());
    let kubeconfig = settings
        .kubeconfig_path
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    match settings.enable {
        Enable::False => return Ok(None),
        Enable::Autodetect if !in_cluster && kubeconfig.is_none() => return Ok(None),
        Enable::True if !in_cluster && kubeconfig.is_none() => bail!(
            "attributes.kubernetes.enable is true but there is no Kubernetes API to talk to: neither KUBERNETES_SERVICE_HOST (in-cluster) nor a kubeconfig (attributes.kubernetes.kubeconfig_path, KUBECONFIG) is set"
        ),
        _ => {}
    }
    // A kubeconfig given explicitly wins over the in-cluster service account.
    let (config, source) = match kubeconfig {
        Some(path) => (load_kubeconfig(&path)?, Source::Kubeconfig(path)),
        None => (
            ::kube::Config::incluster().context(
                "loading the in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST/PORT and the service account in /var/run/secrets/kubernetes.io/serviceaccount)",
            )?,
            Source::InCluster,
        ),
    };
    let Some(node) = node_name(get) else {
        bail!(
            "Kubernetes metadata needs this node's name: set K8S_NODE_NAME (downward API spec.nodeName)"
        );
    };
    let url = &config.cluster_url;
    let connect_port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let needs_dns = crate::sandbox::host_needs_resolution(&url.to_string());
    let mut read_paths = Vec::new();
    let auth = &config.auth_info;
    if let Some(token) = &auth.token_file {
        let token = Path::new(token);
        read_paths.push(token.parent().unwrap_or(token).to_path_buf());
    }
    for f in [&auth.client_certificate, &auth.client_key]
        .into_iter()
        .flatten()
    {
        read_paths.push(PathBuf::from(f));
    }
    if auth.exec.is_some() || auth.auth_provider.is_some() {
        bail!(
            "the kubeconfig's user authenticates with an exec plugin or auth provider, which the sandboxed processor cannot run: use a token, token file or client certificate"
        );
    }
    Ok(Some(Prepared {
        config,
        node,
        cluster_name: settings.cluster_name.clone().filter(|c| !c.is_empty()),
        source,
        connect_port,
        needs_dns,
        read_paths,
    }))
}

fn load_kubeconfig(path: &Path) -> Result<::kube::Config> {
    let what = || format!("loading the kubeconfig {}", path.display());
    let kc = ::kube::config::Kubeconfig::read_from(path).with_context(what)?;
    // The loader is async in signature only (it reads files synchronously): no runtime, no
    // thread is needed before the sandbox.
    futures::executor::block_on(::kube::Config::from_custom_kubeconfig(
        kc,
        &::kube::config::KubeConfigOptions::default(),
    ))
    .with_context(what)
}

/// Phase 2 (after the sandbox): starts the watcher thread; returns the store it fills.
pub fn start(prepared: Prepared) -> Result<Arc<Store>> {
    let store = Arc::new(Store::new(prepared.cluster_name.clone()));
    let shared = Arc::clone(&store);
    let Prepared {
        config,
        node,
        source,
        ..
    } = prepared;
    info!(
        url = %config.cluster_url,
        node,
        source = match &source {
            Source::InCluster => "in-cluster service account".to_string(),
            Source::Kubeconfig(p) => format!("kubeconfig {}", p.display()),
        },
        "Kubernetes metadata on"
    );
    std::thread::Builder::new()
        .name("sonde-kube".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "Kubernetes metadata off: starting its runtime failed");
                    return;
                }
            };
            runtime.block_on(async move {
                let _ = rustls::crypto::ring::default_provider().install_default();
                match ::kube::Client::try_from(config) {
                    Ok(client) => watch::run(client, node, shared).await,
                    Err(e) => error!(error = %e, "Kubernetes metadata off: building the API client failed"),
                }
            });
        })
        .context("starting the Kubernetes metadata thread")?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn autodetect_is_off_outside_a_cluster_and_true_without_one_is_an_error() {
        let none = env(&[]);
        assert!(prepare(&Settings::default(), &none).expect("off").is_none());
        let off = Settings {
            enable: Enable::False,
            ..Settings::default()
        };
        assert!(
            prepare(&off, &env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]))
                .expect("off")
                .is_none()
        );
        let on = Settings {
            enable: Enable::True,
            ..Settings::default()
        };
        let e = prepare(&on, &none).expect_err("nothing to talk to");
        assert!(e.to_string().contains("KUBERNETES_SERVICE_HOST"), "{e}");
    }

    #[test]
    fn a_kubeconfig_gives_the_port_the_token_directory_and_the_node() {
        let dir = std::env::temp_dir().join(format!("sonde-kube-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://kube.example:6443\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\nusers:\n- name: u\n  user:\n    tokenFile: {}/token\n",
                dir.display()
            ),
        )
        .expect("write");
        let settings = Settings {
            kubeconfig_path: Some(path.clone()),
            cluster_name: Some("c1".into()),
            ..Settings::default()
        };
        let p = prepare(&settings, &env(&[("K8S_NODE_NAME", "node-7")]))
            .expect("valid")
            .expect("on");
        assert_eq!(p.connect_port, 6443);
        assert!(p.needs_dns);
        assert_eq!(p.node, "node-7");
        assert_eq!(p.read_paths, vec![dir.clone()]);
        assert_eq!(p.source, Source::Kubeconfig(path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
