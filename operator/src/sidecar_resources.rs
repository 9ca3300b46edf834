//! The injected sidecar's CPU and memory, from the Pod's annotations (ADR 0018). A memory limit
//! also sizes the sidecar's read and write budgets to fit inside it, so that a heavy load makes
//! the sidecar's clients wait for memory rather than get the sidecar OOM-killed.

use blockproxy_protocol::{MIN_SIDECAR_MEMORY_LIMIT, SidecarBudgets, parse_size};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Pod annotations setting the sidecar's resources, as Kubernetes quantities. Without them the
/// sidecar requests [`DEFAULT_CPU_REQUEST`] and [`DEFAULT_MEMORY_REQUEST`] and has no limits.
pub const CPU_REQUEST_ANNOTATION: &str = "blockproxy.io/sidecar-cpu-request";
pub const CPU_LIMIT_ANNOTATION: &str = "blockproxy.io/sidecar-cpu-limit";
pub const MEMORY_REQUEST_ANNOTATION: &str = "blockproxy.io/sidecar-memory-request";
/// At least [`MIN_SIDECAR_MEMORY_LIMIT`] (128Mi); sizes the budgets ([`SidecarBudgets::within`]).
pub const MEMORY_LIMIT_ANNOTATION: &str = "blockproxy.io/sidecar-memory-limit";

/// An idle sidecar's share: it probes the proxies and waits for the app.
pub const DEFAULT_CPU_REQUEST: &str = "50m";
pub const DEFAULT_MEMORY_REQUEST: &str = "64Mi";

/// The annotations a Pod may set for its sidecar's resources.
const ANNOTATIONS: [&str; 4] =
    [CPU_REQUEST_ANNOTATION, CPU_LIMIT_ANNOTATION, MEMORY_REQUEST_ANNOTATION, MEMORY_LIMIT_ANNOTATION];

/// Cluster-wide values for the annotations, for Pods that do not set them (the operator's
/// `--sidecar-{cpu,memory}-{request,limit}` flags, the chart's `sidecarResources`). A Pod's own
/// annotation wins over each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceDefaults(BTreeMap<String, String>);

impl ResourceDefaults {
    /// Checked as a Pod with these annotations would be: a bad default stops the operator at
    /// start instead of refusing every Pod later.
    pub fn new(
        cpu_request: Option<&str>,
        cpu_limit: Option<&str>,
        memory_request: Option<&str>,
        memory_limit: Option<&str>,
    ) -> Result<Self, String> {
        let values = [cpu_request, cpu_limit, memory_request, memory_limit];
        let set: BTreeMap<String, String> = ANNOTATIONS
            .iter()
            .zip(values)
            .filter_map(|(name, v)| Some(((*name).to_owned(), v?.trim().to_owned())))
            .collect();
        SidecarResources::from_annotations(Some(&set))
            .map_err(|e| format!("the sidecar resource defaults (--sidecar-*) are invalid: {e}"))?;
        Ok(Self(set))
    }
}

/// The sidecar's resources and, under a memory limit, its budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarResources {
    cpu_request: String,
    cpu_limit: Option<String>,
    memory_request: String,
    memory_limit: Option<String>,
    /// Sized to the memory limit; `None` leaves the sidecar's own defaults.
    budgets: Option<SidecarBudgets>,
}

impl SidecarResources {
    /// From the Pod's annotations; an error (naming the annotation) refuses the Pod. A limit
    /// below the default request lowers the request to it, as Kubernetes defaults a request to
    /// its limit.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Result<Self, String> {
        let get = |name: &str| annotations.and_then(|a| a.get(name)).map(|v| v.trim().to_owned());
        let (cpu_request, cpu_limit) = (get(CPU_REQUEST_ANNOTATION), get(CPU_LIMIT_ANNOTATION));
        let cpu_limit_m = cpu_limit.as_deref().map(|l| millicores(CPU_LIMIT_ANNOTATION, l)).transpose()?;
        let cpu_request = match (cpu_request, &cpu_limit) {
            (Some(r), _) => r,
            (None, Some(l)) if cpu_limit_m < Some(millicores("", DEFAULT_CPU_REQUEST)?) => l.clone(),
            (None, _) => DEFAULT_CPU_REQUEST.to_owned(),
        };
        let cpu_request_m = millicores(CPU_REQUEST_ANNOTATION, &cpu_request)?;
        if let (Some(limit), Some(limit_m)) = (&cpu_limit, cpu_limit_m)
            && cpu_request_m > limit_m
        {
            return Err(format!(
                "annotation {CPU_REQUEST_ANNOTATION}: {cpu_request:?} is above {CPU_LIMIT_ANNOTATION} {limit:?}"
            ));
        }

        let memory_request = get(MEMORY_REQUEST_ANNOTATION).unwrap_or_else(|| DEFAULT_MEMORY_REQUEST.to_owned());
        let memory_request_bytes = bytes(MEMORY_REQUEST_ANNOTATION, &memory_request)?;
        let memory_limit = get(MEMORY_LIMIT_ANNOTATION);
        let mut budgets = None;
        if let Some(limit) = &memory_limit {
            let limit_bytes = bytes(MEMORY_LIMIT_ANNOTATION, limit)?;
            budgets = Some(SidecarBudgets::within(limit_bytes).ok_or_else(|| {
                format!(
                    "annotation {MEMORY_LIMIT_ANNOTATION}: {limit:?} is below the {} MiB a sidecar needs \
                     (its base and 32 MiB each for reads and writes)",
                    MIN_SIDECAR_MEMORY_LIMIT >> 20
                )
            })?);
            if memory_request_bytes > limit_bytes {
                return Err(format!(
                    "annotation {MEMORY_REQUEST_ANNOTATION}: {memory_request:?} is above {MEMORY_LIMIT_ANNOTATION} {limit:?}"
                ));
            }
        }
        Ok(Self { cpu_request, cpu_limit, memory_request, memory_limit, budgets })
    }

    /// For a Pod with `annotations`, over the cluster's `defaults`.
    pub fn for_pod(
        defaults: &ResourceDefaults,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, String> {
        let mut merged = defaults.0.clone();
        for name in ANNOTATIONS {
            if let Some(v) = annotations.and_then(|a| a.get(name)) {
                merged.insert(name.to_owned(), v.clone());
            }
        }
        Self::from_annotations(Some(&merged)).map_err(|e| {
            if defaults.0.is_empty() { e } else { format!("{e} (with the cluster's sidecar resource defaults)") }
        })
    }

    /// The container's `resources`.
    pub fn resources(&self) -> Value {
        let mut r = json!({"requests": {"cpu": self.cpu_request, "memory": self.memory_request}});
        let mut limits = serde_json::Map::new();
        if let Some(cpu) = &self.cpu_limit {
            limits.insert("cpu".into(), json!(cpu));
        }
        if let Some(memory) = &self.memory_limit {
            limits.insert("memory".into(), json!(memory));
        }
        if !limits.is_empty() {
            r["limits"] = Value::Object(limits);
        }
        r
    }

    /// The sidecar's budget flags, when a memory limit sized them.
    pub fn args(&self) -> Vec<String> {
        let Some(b) = self.budgets else { return Vec::new() };
        [
            ("--read-ahead-bytes", b.read_ahead_bytes),
            ("--write-buffer-bytes", b.write_buffer_bytes),
            ("--max-part-size", b.max_part_size),
        ]
        .into_iter()
        .flat_map(|(flag, n)| [flag.to_owned(), n.to_string()])
        .collect()
    }
}

/// A CPU quantity ("250m", "1", "0.5") in millicores, above zero.
fn millicores(annotation: &str, q: &str) -> Result<u64, String> {
    let bad = || format!("annotation {annotation}: {q:?} is not a CPU quantity like \"250m\" or \"1.5\"");
    let m = if let Some(m) = q.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let (whole, frac) = q.split_once('.').unwrap_or((q, ""));
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 3 {
            return Err(bad());
        }
        let frac_m: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        whole.checked_mul(1000).and_then(|w| w.checked_add(frac_m)).ok_or_else(bad)?
    };
    if m == 0 {
        return Err(format!("annotation {annotation}: {q:?} must be above zero"));
    }
    Ok(m)
}

/// A memory quantity in bytes.
fn bytes(annotation: &str, q: &str) -> Result<u64, String> {
    parse_size(q).map_err(|e| format!("annotation {annotation}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<SidecarResources, String> {
        let a: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        SidecarResources::from_annotations(Some(&a))
    }

    #[test]
    fn the_clusters_defaults_apply_where_a_pod_sets_nothing_and_a_pods_annotation_wins() {
        let defaults = ResourceDefaults::new(Some("100m"), None, None, Some("256Mi")).unwrap();
        let plain = SidecarResources::for_pod(&defaults, None).unwrap();
        assert_eq!(
            plain.resources(),
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
        );
        assert_eq!(plain.budgets, SidecarBudgets::within(256 << 20), "the default limit sizes the budgets");
        let own: BTreeMap<String, String> = [(MEMORY_LIMIT_ANNOTATION.to_owned(), "192Mi".to_owned())].into();
        let pod = SidecarResources::for_pod(&defaults, Some(&own)).unwrap();
        assert_eq!(
            pod.resources(),
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "192Mi"}})
        );
        assert_eq!(pod.budgets, SidecarBudgets::within(192 << 20));
        // Without defaults, nothing changes.
        assert_eq!(
            SidecarResources::for_pod(&ResourceDefaults::default(), None).unwrap(),
            SidecarResources::from_annotations(None).unwrap()
        );
        // A Pod's request above the cluster's limit is refused, saying where the limit came from.
        let big: BTreeMap<String, String> = [(MEMORY_REQUEST_ANNOTATION.to_owned(), "1Gi".to_owned())].into();
        let err = SidecarResources::for_pod(&defaults, Some(&big)).unwrap_err();
        assert!(
            err.contains(MEMORY_REQUEST_ANNOTATION) && err.contains("cluster's sidecar resource defaults"),
            "{err}"
        );
    }

    #[test]
    fn bad_cluster_defaults_are_refused_at_start() {
        for (cpu, mem_limit) in [(Some("fast"), None), (None, Some("100Mi")), (None, Some("lots"))] {
            let err = ResourceDefaults::new(cpu, None, None, mem_limit).unwrap_err();
            assert!(err.contains("--sidecar-"), "{err}");
        }
    }

    #[test]
    fn without_annotations_the_sidecar_requests_little_and_keeps_its_default_budgets() {
        let r = SidecarResources::from_annotations(None).unwrap();
        assert_eq!(r.resources(), json!({"requests": {"cpu": "50m", "memory": "64Mi"}}));
        assert!(r.args().is_empty());
    }

    #[test]
    fn a_memory_limit_sizes_the_budgets_to_fit_inside_it() {
        let r = from(&[(MEMORY_LIMIT_ANNOTATION, "192Mi"), (CPU_LIMIT_ANNOTATION, "2")]).unwrap();
        assert_eq!(
            r.resources(),
            json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "192Mi"}})
        );
        let want = SidecarBudgets::within(192 << 20).unwrap();
        let n = |v: u64| v.to_string();
        assert_eq!(
            r.args(),
            [
                "--read-ahead-bytes".to_owned(),
                n(want.read_ahead_bytes),
                "--write-buffer-bytes".to_owned(),
                n(want.write_buffer_bytes),
                "--max-part-size".to_owned(),
                n(want.max_part_size),
            ]
        );
        assert!(want.peak() <= 192 << 20);
    }

    #[test]
    fn a_cpu_limit_below_the_default_request_lowers_the_request() {
        let r = from(&[(CPU_LIMIT_ANNOTATION, "20m")]).unwrap();
        assert_eq!(r.resources()["requests"]["cpu"], "20m");
        let r = from(&[(CPU_REQUEST_ANNOTATION, "0.25"), (CPU_LIMIT_ANNOTATION, "500m")]).unwrap();
        assert_eq!(r.resources()["requests"]["cpu"], "0.25");
    }

    #[test]
    fn bad_quantities_and_impossible_limits_are_refused_naming_the_annotation() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[(CPU_REQUEST_ANNOTATION, "lots")], CPU_REQUEST_ANNOTATION),
            (&[(CPU_LIMIT_ANNOTATION, "0")], CPU_LIMIT_ANNOTATION),
            (&[(CPU_LIMIT_ANNOTATION, "1.2345")], CPU_LIMIT_ANNOTATION),
            (&[(CPU_REQUEST_ANNOTATION, "2"), (CPU_LIMIT_ANNOTATION, "1")], CPU_REQUEST_ANNOTATION),
            (&[(MEMORY_REQUEST_ANNOTATION, "1.5Gi")], MEMORY_REQUEST_ANNOTATION),
            (&[(MEMORY_LIMIT_ANNOTATION, "64Mi")], "below the 128 MiB"),
            (&[(MEMORY_LIMIT_ANNOTATION, "lots")], MEMORY_LIMIT_ANNOTATION),
            (&[(MEMORY_REQUEST_ANNOTATION, "1Gi"), (MEMORY_LIMIT_ANNOTATION, "512Mi")], MEMORY_REQUEST_ANNOTATION),
        ];
        for (pairs, want) in cases {
            let err = from(pairs).unwrap_err();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn cpu_quantities_read_as_millicores() {
        for (q, m) in [("250m", 250), ("1", 1000), ("0.5", 500), (".5", 500), ("1.25", 1250), ("12", 12_000)] {
            assert_eq!(millicores("a", q), Ok(m), "{q}");
        }
        for q in ["", "m", ".", "-1", "1e3", "1.5m", "0.0001"] {
            assert!(millicores("a", q).is_err(), "{q:?}");
        }
    }
}
