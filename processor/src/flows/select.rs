//! Which attributes the flow metrics carry: the attributes Sonde can give a flow, the
//! reference system's low-cardinality defaults, and `attributes.select.<metric>.include` /
//! `.exclude` (globs over attribute names, written with dots or underscores).

/// Every attribute a flow series can carry, by its OTel name (Prometheus replaces the dots
/// with underscores). `k8s.src.*` / `k8s.dst.*` name an end whose address is a pod of this
/// node (the Kubernetes store's address index); any other end has them empty.
pub const ATTRIBUTES: [&str; 18] = [
    "direction",
    "src.address",
    "dst.address",
    "src.port",
    "dst.port",
    "transport",
    "iface",
    "src.name",
    "dst.name",
    "src.cidr",
    "dst.cidr",
    "k8s.src.owner.name",
    "k8s.src.owner.type",
    "k8s.src.namespace",
    "k8s.dst.owner.name",
    "k8s.dst.owner.type",
    "k8s.dst.namespace",
    "k8s.cluster.name",
];

/// The attributes that need the Kubernetes store's address index.
pub const K8S_ENDS: [&str; 6] = [
    "k8s.src.owner.name",
    "k8s.src.owner.type",
    "k8s.src.namespace",
    "k8s.dst.owner.name",
    "k8s.dst.owner.type",
    "k8s.dst.namespace",
];

/// `attributes.select.<metric>` for one metric: `include` (None: the defaults) then `exclude`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeSelection {
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
}

/// The selections of the two flow metrics. A metric without its own selection uses the
/// other's (`beyla_network_flow_bytes` usually configures both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSelection {
    pub bytes: AttributeSelection,
    pub packets: AttributeSelection,
}

impl FlowSelection {
    /// The selection in force for bytes and for packets.
    pub fn effective(&self) -> (&AttributeSelection, &AttributeSelection) {
        let empty = |s: &AttributeSelection| s.include.is_none() && s.exclude.is_empty();
        let bytes = if empty(&self.bytes) {
            &self.packets
        } else {
            &self.bytes
        };
        let packets = if empty(&self.packets) {
            &self.bytes
        } else {
            &self.packets
        };
        (bytes, packets)
    }
}

/// The reference system's defaults: `direction`; `src.cidr`/`dst.cidr` when `network.cidrs`
/// is set; with Kubernetes metadata on, both ends' owner name and type and namespace
/// ([`K8S_ENDS`]) and `k8s.cluster.name`.
pub fn defaults(cidrs: bool, kubernetes: bool) -> Vec<&'static str> {
    let mut out = vec!["direction"];
    if cidrs {
        out.extend(["src.cidr", "dst.cidr"]);
    }
    if kubernetes {
        out.extend(K8S_ENDS);
        out.push("k8s.cluster.name");
    }
    out
}

/// The attributes `selection` keeps, in `ATTRIBUTES` order.
pub fn resolve(selection: &AttributeSelection, cidrs: bool, kubernetes: bool) -> Vec<&'static str> {
    let base = defaults(cidrs, kubernetes);
    ATTRIBUTES
        .iter()
        .copied()
        .filter(|a| match &selection.include {
            None => base.contains(a),
            Some(globs) => globs.iter().any(|g| matches(g, a)),
        })
        .filter(|a| !selection.exclude.iter().any(|g| matches(g, a)))
        .collect()
}

/// `*` matches any run of characters; dots and underscores are the same character, so
/// `src_*`, `src.*` and `src.address` all name `src.address`.
pub fn matches(glob: &str, attribute: &str) -> bool {
    let g: Vec<char> = glob.trim().chars().map(unify).collect();
    let a: Vec<char> = attribute.chars().map(unify).collect();
    glob_chars(&g, &a)
}

fn unify(c: char) -> char {
    if c == '.' { '_' } else { c }
}

fn glob_chars(g: &[char], a: &[char]) -> bool {
    match g.split_first() {
        None => a.is_empty(),
        Some(('*', rest)) => (0..=a.len()).any(|i| glob_chars(rest, &a[i..])),
        Some((c, rest)) => a.first() == Some(c) && glob_chars(rest, &a[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(include: Option<&[&str]>, exclude: &[&str]) -> AttributeSelection {
        AttributeSelection {
            include: include.map(|i| i.iter().map(|s| s.to_string()).collect()),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_are_low_cardinality() {
        let none = AttributeSelection::default();
        assert_eq!(resolve(&none, false, false), ["direction"]);
        assert_eq!(
            resolve(&none, true, true),
            [
                "direction",
                "src.cidr",
                "dst.cidr",
                "k8s.src.owner.name",
                "k8s.src.owner.type",
                "k8s.src.namespace",
                "k8s.dst.owner.name",
                "k8s.dst.owner.type",
                "k8s.dst.namespace",
                "k8s.cluster.name"
            ]
        );
        assert_eq!(
            resolve(&sel(None, &["k8s_src_*"]), false, true),
            [
                "direction",
                "k8s.dst.owner.name",
                "k8s.dst.owner.type",
                "k8s.dst.namespace",
                "k8s.cluster.name"
            ]
        );
    }

    #[test]
    fn include_and_exclude_globs_in_either_spelling() {
        assert_eq!(
            resolve(
                &sel(Some(&["src_*", "transport"]), &["src.name"]),
                false,
                false
            ),
            ["src.address", "src.port", "transport", "src.cidr"]
        );
        assert_eq!(
            resolve(&sel(Some(&["*"]), &[]), false, false).len(),
            ATTRIBUTES.len()
        );
        // Exclude alone narrows the defaults.
        assert!(resolve(&sel(None, &["direction"]), false, false).is_empty());
        assert!(matches("k8s_cluster_name", "k8s.cluster.name"));
        assert!(!matches("src", "src.address"));
    }

    #[test]
    fn one_metric_selection_serves_both() {
        let s = FlowSelection {
            bytes: sel(Some(&["iface"]), &[]),
            packets: AttributeSelection::default(),
        };
        let (b, p) = s.effective();
        assert_eq!((b, p), (&s.bytes, &s.bytes));
    }
}
