//! `/proc/<pid>/status`, parsed into typed fields: the identity, capability, `NoNewPrivs` and
//! seccomp lines the loader's audit, its process selection and the processor's privilege
//! checks read.

use std::fmt;

/// The four ids of a `Uid:` or `Gid:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub real: u32,
    pub effective: u32,
    pub saved: u32,
    pub filesystem: u32,
}

impl Ids {
    /// True when any of the four is `id` (e.g. 0: some root identity is held).
    pub fn any_is(&self, id: u32) -> bool {
        [self.real, self.effective, self.saved, self.filesystem].contains(&id)
    }
}

impl fmt::Display for Ids {
    /// Space-separated, in the kernel's order: real, effective, saved, filesystem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.real, self.effective, self.saved, self.filesystem
        )
    }
}

/// The fields of `/proc/<pid>/status` Sonde reads. Capability sets are the kernel's bit masks
/// (bit n is capability n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// The command name (`Name:`, as the kernel escapes it).
    pub name: String,
    /// Thread-group id: equal to the pid for a process, different for a thread.
    pub tgid: u32,
    pub ppid: u32,
    pub uid: Ids,
    pub gid: Ids,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// Seccomp mode (0 off, 1 strict, 2 filters); None on a kernel built without seccomp.
    pub seccomp: Option<u32>,
    /// Number of seccomp filters attached; None on kernels that do not report it.
    pub seccomp_filters: Option<u32>,
}

/// Reading or parsing a status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc status has no {0} line")]
    Missing(&'static str),
    #[error("/proc status line {field} has an unreadable value {value:?}")]
    Invalid { field: &'static str, value: String },
}

impl ProcStatus {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Result<ProcStatus, StatusError> {
        read(format!("/proc/{pid}/status"))
    }

    /// Reads `/proc/self/status`.
    pub fn of_self() -> Result<ProcStatus, StatusError> {
        read("/proc/self/status".to_string())
    }

    /// Parses the text of a status file. Every field but the seccomp ones is required: a
    /// status without them is not one this code understands, and privilege checks must not
    /// read a missing capability line as "none".
    pub fn parse(text: &str) -> Result<ProcStatus, StatusError> {
        let value = |field: &'static str| {
            text.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .map(|v| v.strip_prefix('\t').unwrap_or(v))
        };
        let required = |field: &'static str| value(field).ok_or(StatusError::Missing(field));
        let invalid = |field: &'static str, v: &str| StatusError::Invalid {
            field,
            value: v.to_string(),
        };
        let decimal = |field: &'static str, v: &str| -> Result<u32, StatusError> {
            v.trim().parse().map_err(|_| invalid(field, v))
        };
        let mask = |field: &'static str| -> Result<u64, StatusError> {
            let v = required(field)?;
            u64::from_str_radix(v.trim(), 16).map_err(|_| invalid(field, v))
        };
        let ids = |field: &'static str| -> Result<Ids, StatusError> {
            let v = required(field)?;
            let mut it = v.split_whitespace().map(|n| decimal(field, n));
            let mut next = || it.next().unwrap_or_else(|| Err(invalid(field, v)));
            Ok(Ids {
                real: next()?,
                effective: next()?,
                saved: next()?,
                filesystem: next()?,
            })
        };
        let optional = |field: &'static str| value(field).map(|v| decimal(field, v)).transpose();
        Ok(ProcStatus {
            name: required("Name")?.to_string(),
            tgid: decimal("Tgid", required("Tgid")?)?,
            ppid: decimal("PPid", required("PPid")?)?,
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            cap_inh: mask("CapInh")?,
            cap_prm: mask("CapPrm")?,
            cap_eff: mask("CapEff")?,
            cap_bnd: mask("CapBnd")?,
            cap_amb: mask("CapAmb")?,
            no_new_privs: decimal("NoNewPrivs", required("NoNewPrivs")?)? == 1,
            seccomp: optional("Seccomp")?,
            seccomp_filters: optional("Seccomp_filters")?,
        })
    }
}

fn read(path: String) -> Result<ProcStatus, StatusError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => ProcStatus::parse(&text),
        Err(source) => Err(StatusError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A processor's status on Linux 6.18, abridged.
    const PROCESSOR: &str = "Name:\tsonde-processor\nUmask:\t0077\nState:\tS (sleeping)\n\
        Tgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nFDSize:\t64\n\
        Groups:\t65534 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t4\nSpeculation_Store_Bypass:\tvulnerable\n";

    #[test]
    fn parses_every_field() {
        let s = ProcStatus::parse(PROCESSOR).expect("parse");
        assert_eq!(s.name, "sonde-processor");
        assert_eq!((s.tgid, s.ppid), (4242, 4200));
        assert_eq!(s.uid.to_string(), "65534 65534 65534 65534");
        assert!(!s.uid.any_is(0) && s.gid.any_is(65534));
        assert_eq!(s.cap_bnd, 0x1ff_ffff_ffff);
        assert_eq!((s.cap_inh, s.cap_prm, s.cap_eff, s.cap_amb), (0, 0, 0, 0));
        assert!(s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters), (Some(2), Some(4)));
    }

    #[test]
    fn seccomp_lines_are_optional_and_names_keep_spaces() {
        let text = PROCESSOR
            .replace("Seccomp:\t2\nSeccomp_filters:\t4\n", "")
            .replace("sonde-processor", "a b");
        let s = ProcStatus::parse(&text).expect("parse");
        assert_eq!((s.seccomp, s.seccomp_filters), (None, None));
        assert_eq!(s.name, "a b");
    }

    #[test]
    fn a_missing_or_garbled_privilege_line_is_an_error() {
        let no_eff = PROCESSOR.replace("CapEff:\t0000000000000000\n", "");
        assert!(matches!(
            ProcStatus::parse(&no_eff),
            Err(StatusError::Missing("CapEff"))
        ));
        let short_uid = PROCESSOR.replace("Uid:\t65534\t65534\t65534\t65534", "Uid:\t0\t0");
        assert!(matches!(
            ProcStatus::parse(&short_uid),
            Err(StatusError::Invalid { field: "Uid", .. })
        ));
        let bad_mask = PROCESSOR.replace("CapAmb:\t0000000000000000", "CapAmb:\tzz");
        assert!(matches!(
            ProcStatus::parse(&bad_mask),
            Err(StatusError::Invalid {
                field: "CapAmb",
                ..
            })
        ));
    }

    #[test]
    fn a_field_name_is_not_a_prefix_match() {
        // `Seccomp` must not read the `Seccomp_filters` line.
        let text = PROCESSOR.replace("Seccomp:\t2\n", "");
        let s = ProcStatus::parse(&text).expect("parse");
        assert_eq!((s.seccomp, s.seccomp_filters), (None, Some(4)));
    }

    #[test]
    fn reads_this_process() {
        let s = ProcStatus::of_self().expect("own status");
        assert_eq!(s.tgid, std::process::id());
        assert_eq!(
            ProcStatus::of(std::process::id()).expect("by pid").tgid,
            s.tgid
        );
        assert!(matches!(
            ProcStatus::of(u32::MAX),
            Err(StatusError::Read { .. })
        ));
    }
}
