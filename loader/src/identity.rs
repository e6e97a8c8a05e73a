//! Who the processor is, as far as the control socket and single-host mode are concerned:
//! `processor.user` (a name, a uid or `*`) and `processor.group` resolved once to ids, root
//! refused.

use anyhow::{Context, Result, bail};

/// `processor.user` value meaning "any user of `processor.group`": for a processor whose uid
/// is not known in advance (systemd `DynamicUser=`, a pod's random uid).
pub const ANY_USER: &str = "*";

/// Who the processor is, as far as the control socket is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorIdentity {
    /// A known user; `gid` is `processor.group` or the user's primary group.
    User { uid: u32, gid: u32 },
    /// Any uid whose gid is `gid` (`processor.user: "*"`).
    AnyUserOfGroup { gid: u32 },
}

fn resolve_group(group: &str) -> Result<u32> {
    match group.parse::<u32>() {
        Ok(gid) => Ok(gid),
        Err(_) => Ok(nix::unistd::Group::from_name(group)
            .with_context(|| format!("looking up processor.group {group:?}"))?
            .with_context(|| format!("processor.group {group:?}: no such group"))?
            .gid
            .as_raw()),
    }
}

/// Resolves `processor.user` (a name, a numeric uid or `*`) and `processor.group`.
pub fn resolve_processor(user: &str, group: Option<&str>) -> Result<ProcessorIdentity> {
    if user == ANY_USER {
        let Some(group) = group else {
            bail!(
                "processor.user \"*\" (any user) needs processor.group: the group is then what the control socket checks"
            );
        };
        let gid = resolve_group(group)?;
        if gid == 0 {
            bail!("processor.group {group:?} is root's group; the processor must run unprivileged");
        }
        return Ok(ProcessorIdentity::AnyUserOfGroup { gid });
    }
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let gid = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map_or(uid, |u| u.gid.as_raw());
            (uid, gid)
        }
        Err(_) => {
            let u = nix::unistd::User::from_name(user)
                .with_context(|| format!("looking up processor.user {user:?}"))?
                .with_context(|| format!("processor.user {user:?}: no such user"))?;
            (u.uid.as_raw(), u.gid.as_raw())
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => resolve_group(g)?,
    };
    if uid == 0 {
        bail!("processor.user {user:?} is root; the processor must run unprivileged");
    }
    Ok(ProcessorIdentity::User { uid, gid })
}
