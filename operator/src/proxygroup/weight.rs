//! Each proxy's rendezvous weight: its PersistentVolume's capacity in GiB, so a proxy on a disk
//! twice as large owns about twice the keys and fills at the same pace (ADR 0003).

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;

const GIB: f64 = (1u64 << 30) as f64;

/// The weight of the proxy whose cache is PV `pv`: whole GiB of its capacity, at least 1 (also
/// when the PV or its capacity is unknown), at most `u32::MAX`.
pub fn of_pv(pvs: &[PersistentVolume], pv: &str) -> u32 {
    let capacity = pvs
        .iter()
        .find(|p| p.name_any() == pv)
        .and_then(|p| p.spec.as_ref()?.capacity.as_ref()?.get("storage").map(|q| q.0.clone()))
        .and_then(|q| bytes(&q));
    capacity.map_or(1, |b| (b / GIB).floor().clamp(1.0, f64::from(u32::MAX)) as u32)
}

/// The weight of the proxy whose cache is claim `pvc` (a proxy being drained).
pub fn of_claim(pvs: &[PersistentVolume], pvcs: &[PersistentVolumeClaim], pvc: &str) -> u32 {
    pvcs.iter()
        .find(|c| c.name_any() == pvc)
        .and_then(|c| c.spec.as_ref()?.volume_name.clone())
        .map_or(1, |pv| of_pv(pvs, &pv))
}

/// Bytes of a Kubernetes quantity (`100Gi`, `1.5T`, `500M`, `1e12`, `4096`); `None` when it is
/// not one.
pub fn bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, factor) = SUFFIXES.iter().find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f))).unwrap_or((q, 1.0));
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PersistentVolumeSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn pv(name: &str, capacity: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity(capacity.into()))])),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn quantities_in_every_notation() {
        assert_eq!(bytes("4096"), Some(4096.0));
        assert_eq!(bytes("100Gi"), Some(100.0 * GIB));
        assert_eq!(bytes("1.5Ti"), Some(1.5 * 1024.0 * GIB));
        assert_eq!(bytes("500G"), Some(5e11));
        assert_eq!(bytes("1e12"), Some(1e12));
        assert_eq!(bytes("Gi"), None);
        assert_eq!(bytes("-1Gi"), None);
        assert_eq!(bytes("ten"), None);
    }

    #[test]
    fn a_proxy_weighs_its_pvs_gib_and_at_least_one() {
        let pvs = [pv("big", "1Ti"), pv("small", "100Gi"), pv("tiny", "10Mi"), pv("odd", "lots")];
        assert_eq!(of_pv(&pvs, "big"), 1024);
        assert_eq!(of_pv(&pvs, "small"), 100);
        assert_eq!(of_pv(&pvs, "tiny"), 1, "under 1 GiB still gets keys");
        assert_eq!(of_pv(&pvs, "odd"), 1, "an unreadable capacity weighs 1");
        assert_eq!(of_pv(&pvs, "missing"), 1);
        let claim = PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta { name: Some("c".into()), ..Default::default() },
            spec: Some(PersistentVolumeClaimSpec { volume_name: Some("small".into()), ..Default::default() }),
            status: None,
        };
        assert_eq!(of_claim(&pvs, &[claim], "c"), 100, "a draining proxy keeps its weight");
        assert_eq!(of_claim(&pvs, &[], "c"), 1);
    }
}
