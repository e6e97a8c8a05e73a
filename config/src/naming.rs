//! Service names from the workload: the one ladder that names a process's spans and
//! resources, and the few values of a process's environment it reads.
//!
//! The name comes from the first rung that has one:
//! 1. the selector that selected the process: its `name` (for the top-level selector,
//!    `open_port` / `auto_target_exe` / `target_pids`, that is `service_name`);
//! 2. the process's own `OTEL_SERVICE_NAME`, then `service.name` in its
//!    `OTEL_RESOURCE_ATTRIBUTES` (the loader reads `/proc/<pid>/environ` and hands the processor
//!    only these values, never the environment);
//! 3. the pod annotation `resource.opentelemetry.io/service.name`;
//! 4. the pod label `app.kubernetes.io/name`;
//! 5. the pod's top owner's name (Deployment, StatefulSet, DaemonSet, CronJob, Job);
//! 6. the pod's name;
//! 7. the container's name;
//! 8. the executable's name.
//!
//! The namespace is resolved the same way, on its own: the selector's `namespace`
//! (`service_namespace` for the top-level selector); the process's `OTEL_SERVICE_NAMESPACE`,
//! then `service.namespace` in its `OTEL_RESOURCE_ATTRIBUTES`; the annotation
//! `resource.opentelemetry.io/service.namespace`; the label `app.kubernetes.io/part-of`; the
//! pod's Kubernetes namespace; else none.
//!
//! Rungs 3 to 7 need Kubernetes metadata, which Sonde does not have yet: their inputs are
//! `None` until it does.

/// The variable (the agent's and a process's) carrying resource attributes.
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// The longest environment the loader reads from `/proc/<pid>/environ` (ARG_MAX is larger;
/// variables past this are not seen).
pub const MAX_ENVIRON_BYTES: usize = 256 << 10;

/// Parses `OTEL_RESOURCE_ATTRIBUTES` text: `key=value` pairs separated by commas, values
/// percent-encoded (OpenTelemetry's resource SDK specification). Malformed pairs are skipped.
pub fn parse_resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

/// The value of `key` among `attrs` (the last one wins), when not blank.
pub fn attribute(attrs: &[(String, String)], key: &str) -> Option<String> {
    attrs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.trim().is_empty())
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a process's environment says about its service: the only values the loader takes
/// from `/proc/<pid>/environ`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvNames {
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
}

impl EnvNames {
    /// From the bytes of `/proc/<pid>/environ` (NUL-separated `NAME=value`).
    /// `OTEL_SERVICE_NAME` wins over `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, and
    /// `OTEL_SERVICE_NAMESPACE` over `service.namespace`.
    pub fn from_environ(environ: &[u8]) -> EnvNames {
        let mut name = None;
        let mut namespace = None;
        let mut attrs = Vec::new();
        for var in environ.split(|&b| b == 0) {
            let Some(eq) = var.iter().position(|&b| b == b'=') else {
                continue;
            };
            let value = || Some(String::from_utf8_lossy(&var[eq + 1..]).trim().to_string());
            match &var[..eq] {
                b"OTEL_SERVICE_NAME" => name = value(),
                b"OTEL_SERVICE_NAMESPACE" => namespace = value(),
                b"OTEL_RESOURCE_ATTRIBUTES" => {
                    attrs = parse_resource_attributes(&String::from_utf8_lossy(&var[eq + 1..]))
                }
                _ => {}
            }
        }
        let blank = |v: Option<String>| v.filter(|v| !v.is_empty());
        EnvNames {
            service_name: blank(name).or_else(|| attribute(&attrs, "service.name")),
            service_namespace: blank(namespace).or_else(|| attribute(&attrs, "service.namespace")),
        }
    }
}

/// What Kubernetes metadata says about a process's pod (all `None` until Sonde has it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sNames {
    /// Annotation `resource.opentelemetry.io/service.name`.
    pub annotation_name: Option<String>,
    /// Annotation `resource.opentelemetry.io/service.namespace`.
    pub annotation_namespace: Option<String>,
    /// Label `app.kubernetes.io/name`.
    pub label_name: Option<String>,
    /// Label `app.kubernetes.io/part-of`.
    pub label_part_of: Option<String>,
    /// The pod's top owner (Deployment, StatefulSet, DaemonSet, CronJob, Job).
    pub owner_name: Option<String>,
    /// The pod's Kubernetes namespace.
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub container_name: Option<String>,
}

/// Every input of the ladder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameInputs {
    /// The selecting selector's `name` and `namespace`.
    pub selector_name: Option<String>,
    pub selector_namespace: Option<String>,
    /// From the process's environment.
    pub env: EnvNames,
    pub k8s: K8sNames,
    /// The executable's file name.
    pub exe_name: String,
}

/// Which rung gave the name (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    Selector,
    ProcessEnv,
    PodAnnotation,
    PodLabel,
    Owner,
    PodName,
    ContainerName,
    Executable,
}

/// A resolved service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    pub name: String,
    pub namespace: Option<String>,
    pub rung: Rung,
}

fn given(v: &Option<String>) -> Option<&String> {
    v.as_ref().filter(|v| !v.trim().is_empty())
}

impl NameInputs {
    /// Climbs the ladder (module documentation).
    pub fn resolve(&self) -> ServiceNames {
        let k = &self.k8s;
        let rungs = [
            (Rung::Selector, &self.selector_name),
            (Rung::ProcessEnv, &self.env.service_name),
            (Rung::PodAnnotation, &k.annotation_name),
            (Rung::PodLabel, &k.label_name),
            (Rung::Owner, &k.owner_name),
            (Rung::PodName, &k.pod_name),
            (Rung::ContainerName, &k.container_name),
        ];
        let (rung, name) = rungs
            .iter()
            .find_map(|(r, v)| given(v).map(|v| (*r, v.clone())))
            .unwrap_or((Rung::Executable, self.exe_name.clone()));
        let namespace = [
            &self.selector_namespace,
            &self.env.service_namespace,
            &k.annotation_namespace,
            &k.label_part_of,
            &k.namespace,
        ]
        .into_iter()
        .find_map(given)
        .cloned();
        ServiceNames {
            name,
            namespace,
            rung,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// Every rung, filled from the bottom up: each one wins over all below it.
    #[test]
    fn each_rung_wins_over_the_ones_below() {
        let mut i = NameInputs {
            exe_name: "python3".into(),
            ..NameInputs::default()
        };
        let r = i.resolve();
        assert_eq!(
            (r.name.as_str(), r.rung, r.namespace),
            ("python3", Rung::Executable, None)
        );
        type Step = (fn(&mut NameInputs), &'static str, Rung);
        let steps: [Step; 7] = [
            (
                |i| i.k8s.container_name = s("web"),
                "web",
                Rung::ContainerName,
            ),
            (
                |i| i.k8s.pod_name = s("shop-7d9f-abcde"),
                "shop-7d9f-abcde",
                Rung::PodName,
            ),
            (|i| i.k8s.owner_name = s("shop"), "shop", Rung::Owner),
            (
                |i| i.k8s.label_name = s("shop-label"),
                "shop-label",
                Rung::PodLabel,
            ),
            (
                |i| i.k8s.annotation_name = s("shop-annotated"),
                "shop-annotated",
                Rung::PodAnnotation,
            ),
            (
                |i| i.env.service_name = s("from-env"),
                "from-env",
                Rung::ProcessEnv,
            ),
            (
                |i| i.selector_name = s("from-selector"),
                "from-selector",
                Rung::Selector,
            ),
        ];
        for (set, name, rung) in steps {
            set(&mut i);
            let r = i.resolve();
            assert_eq!((r.name.as_str(), r.rung), (name, rung));
        }
        // A blank value is no name: the rung below answers.
        i.selector_name = s(" ");
        assert_eq!(i.resolve().rung, Rung::ProcessEnv);
    }

    #[test]
    fn each_namespace_rung_wins_over_the_ones_below() {
        let mut i = NameInputs::default();
        assert_eq!(i.resolve().namespace, None);
        i.k8s.namespace = s("prod");
        assert_eq!(i.resolve().namespace, s("prod"));
        i.k8s.label_part_of = s("shop-suite");
        assert_eq!(i.resolve().namespace, s("shop-suite"));
        i.k8s.annotation_namespace = s("annotated");
        assert_eq!(i.resolve().namespace, s("annotated"));
        i.env.service_namespace = s("env-ns");
        assert_eq!(i.resolve().namespace, s("env-ns"));
        i.selector_namespace = s("selector-ns");
        assert_eq!(i.resolve().namespace, s("selector-ns"));
    }

    #[test]
    fn process_environment_names() {
        let env = b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=cart%20svc,service.namespace=shop\0HOME=/\0";
        assert_eq!(
            EnvNames::from_environ(env),
            EnvNames {
                service_name: s("cart svc"),
                service_namespace: s("shop")
            }
        );
        // OTEL_SERVICE_NAME wins over the attribute, wherever it appears.
        let env = b"OTEL_SERVICE_NAME=explicit\0OTEL_RESOURCE_ATTRIBUTES=service.name=attr\0OTEL_SERVICE_NAMESPACE=ns\0";
        assert_eq!(
            EnvNames::from_environ(env),
            EnvNames {
                service_name: s("explicit"),
                service_namespace: s("ns")
            }
        );
        // Blank and malformed values are no names; bytes that are not UTF-8 are replaced.
        let env = b"OTEL_SERVICE_NAME=\0OTEL_RESOURCE_ATTRIBUTES=garbage,=x,service.name=\xff\0NOEQUALS\0";
        assert_eq!(
            EnvNames::from_environ(env).service_name.as_deref(),
            Some("\u{fffd}")
        );
        assert_eq!(EnvNames::from_environ(b""), EnvNames::default());
    }

    #[test]
    fn resource_attributes_decode_percent_escapes() {
        let a = parse_resource_attributes("a=1, b = x%2Cy ,c=%zz,d=%4");
        assert_eq!(attribute(&a, "a"), s("1"));
        assert_eq!(attribute(&a, "b"), s("x,y"));
        assert_eq!(attribute(&a, "c"), s("%zz"));
        assert_eq!(attribute(&a, "d"), s("%4"));
        assert_eq!(attribute(&a, "e"), None);
    }
}
