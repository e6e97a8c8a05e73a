//! The container a process runs in, from its cgroup path (`/proc/<pid>/cgroup`): the id the
//! container runtime gave it, which the processor matches against the pods' container
//! statuses for Kubernetes metadata. The loader reads it because the processor cannot see
//! other processes' `/proc` (its sandbox hides them).
//!
//! Shapes recognised (the last path component that carries a 64-hex id wins):
//! - systemd driver: `…/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope` (podman);
//! - cgroupfs driver: `/kubepods/besteffort/pod<uid>/<id>`, `/docker/<id>`;
//! - a reader inside a private cgroup namespace sees paths starting with `/..`: same rules.
//!
//! cgroup v2 (`0::<path>`) and v1 (`<n>:<controllers>:<path>`) lines both count.

use std::fs;

/// Length of the ids containerd, CRI-O, Docker and podman give containers.
const ID_LEN: usize = 64;

/// The container id of `pid`, None when it is not in a container (or has exited).
pub fn container_id(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    container_id_from(&text)
}

/// The container id in the text of a `/proc/<pid>/cgroup` file.
pub fn container_id_from(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        // `hierarchy-id:controllers:path`; the path may itself contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(id_in_component)
    })
}

/// The id in one path component: `<prefix>-<id>.scope` or a bare `<id>`.
fn id_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = match name.rsplit_once('-') {
        Some((_, id)) if component.ends_with(".scope") => id,
        _ => name,
    };
    (id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

    #[test]
    fn systemd_driver_runtimes() {
        for prefix in ["cri-containerd", "crio", "docker", "libpod"] {
            let file = format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/{prefix}-{ID}.scope\n"
            );
            assert_eq!(container_id_from(&file).as_deref(), Some(ID), "{prefix}");
        }
    }

    #[test]
    fn cgroupfs_driver_and_docker() {
        let k8s = format!("0::/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}\n");
        assert_eq!(container_id_from(&k8s).as_deref(), Some(ID));
        let docker = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        assert_eq!(container_id_from(&docker).as_deref(), Some(ID));
    }

    #[test]
    fn private_cgroup_namespace_paths() {
        let file = format!("0::/../../kubepods-burstable-podabc.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id_from(&file).as_deref(), Some(ID));
    }

    #[test]
    fn no_container() {
        for file in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/system.slice/nginx.service\n",
            "0::/\n",
            "",
            "garbage",
            "0::/kubepods.slice/cri-containerd-short.scope\n",
        ] {
            assert_eq!(container_id_from(file), None, "{file}");
        }
    }
}
