//! The kubelet's oom_score_adj policy, exactly, and its inverse.
//!
//! Source: `GetContainerOOMScoreAdjust` in kubernetes/kubernetes
//! [`pkg/kubelet/qos/policy.go`](https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/qos/policy.go)
//! (constants `KubeletOOMScoreAdj = -999`, `KubeProxyOOMScoreAdj = -999`,
//! `guaranteedOOMScoreAdj = -997`, `besteffortOOMScoreAdj = 1000`):
//!
//! ```text
//! node-critical pod (IsNodeCriticalPod)  -> -997
//! Guaranteed                             -> -997
//! BestEffort                             -> 1000
//! Burstable: adj = 1000 - (1000 * memoryRequest) / memoryCapacity   (int64 division)
//!            adj < 1000 + guaranteedOOMScoreAdj (= 3)  -> 3
//!            adj == besteffortOOMScoreAdj (1000)       -> 999
//! ```
//!
//! Older kubelets (before -997 was introduced) used -998 for Guaranteed and
//! clamped Burstable at 2. Pod-level resources and restartable sidecar init
//! containers change the request the formula uses (the pod's unassigned
//! request is shared among containers; a sidecar takes at most the adj of
//! the smallest regular container): the inverse estimates the request *the
//! formula saw*. The pod sandbox (pause) gets -998 from the runtime
//! (containerd, CRI-O), not from this policy.

use crate::enrich::identity::QosClass;
use crate::report::QosCheck;
use crate::units::Bytes;

/// `guaranteedOOMScoreAdj`: Guaranteed and node-critical pods.
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// `besteffortOOMScoreAdj`.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;
/// `KubeletOOMScoreAdj` and `KubeProxyOOMScoreAdj`.
pub const KUBELET_OOM_SCORE_ADJ: i32 = -999;
/// The pod sandbox (pause) container, set by containerd and CRI-O.
pub const SANDBOX_OOM_SCORE_ADJ: i32 = -998;
/// The lowest Burstable value: `1000 + guaranteedOOMScoreAdj`.
pub const BURSTABLE_MIN_OOM_SCORE_ADJ: i32 = 1000 + GUARANTEED_OOM_SCORE_ADJ;
/// The highest Burstable value: one below BestEffort.
pub const BURSTABLE_MAX_OOM_SCORE_ADJ: i32 = BEST_EFFORT_OOM_SCORE_ADJ - 1;

/// The oom_score_adj the kubelet gives a container of a pod of class `qos`
/// whose memory request is `memory_request_bytes` (0 when unset) on a node
/// of `node_capacity_bytes` (the node's memory capacity, not allocatable).
/// A node-critical pod gets [`GUARANTEED_OOM_SCORE_ADJ`] whatever its class.
/// A capacity of 0 (unknown) gives the Burstable maximum, 999.
pub fn kubelet_oom_score_adj(
    qos: QosClass,
    memory_request_bytes: u64,
    node_capacity_bytes: u64,
) -> i32 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let Some(share) = (1000 * u128::from(memory_request_bytes))
                .checked_div(u128::from(node_capacity_bytes))
            else {
                return BURSTABLE_MAX_OOM_SCORE_ADJ;
            };
            // 1000 - share, in i128 so that a request above capacity goes negative.
            let adj = 1000 - i128::try_from(share).unwrap_or(i128::MAX);
            if adj < i128::from(BURSTABLE_MIN_OOM_SCORE_ADJ) {
                BURSTABLE_MIN_OOM_SCORE_ADJ
            } else if adj == i128::from(BEST_EFFORT_OOM_SCORE_ADJ) {
                BURSTABLE_MAX_OOM_SCORE_ADJ
            } else {
                // 3 ..= 999 here.
                i32::try_from(adj).unwrap_or(BURSTABLE_MAX_OOM_SCORE_ADJ)
            }
        }
    }
}

/// `ceil(a * b / 1000)` without overflow.
fn ceil_per_mille(a: u64, b: u64) -> u128 {
    (u128::from(a) * u128::from(b)).div_ceil(1000)
}

/// The range `(min, max)` of memory requests (bytes, inclusive) for which
/// the Burstable formula yields `oom_score_adj` on a node of
/// `node_capacity_bytes`. `None` outside 3..=999, for a zero capacity, or
/// when no request gives that value (capacities under 1000 bytes).
///
/// 999 covers requests from 0 up to 0.2 % of capacity (1000 is clamped to
/// 999); 3 covers everything from 99.7 % up, so its `max` is `u64::MAX`.
pub fn estimate_request(oom_score_adj: i32, node_capacity_bytes: u64) -> Option<(u64, u64)> {
    if !(BURSTABLE_MIN_OOM_SCORE_ADJ..=BURSTABLE_MAX_OOM_SCORE_ADJ).contains(&oom_score_adj)
        || node_capacity_bytes == 0
    {
        return None;
    }
    // The formula's `(1000 * request) / capacity`, the value k with
    // k * cap <= 1000 * request < (k + 1) * cap.
    let k = u64::try_from(1000 - oom_score_adj).ok()?;
    let min = if oom_score_adj == BURSTABLE_MAX_OOM_SCORE_ADJ {
        0
    } else {
        ceil_per_mille(k, node_capacity_bytes)
    };
    let max = if oom_score_adj == BURSTABLE_MIN_OOM_SCORE_ADJ {
        u128::from(u64::MAX)
    } else {
        ceil_per_mille(k + 1, node_capacity_bytes).checked_sub(1)?
    };
    if max < min {
        return None;
    }
    Some((
        u64::try_from(min).ok()?,
        u64::try_from(max).unwrap_or(u64::MAX),
    ))
}

/// Whether `observed_adj` fits what the kubelet sets for `qos`, and for a
/// Burstable victim the memory request it implies (the midpoint of
/// [`estimate_request`]'s range, its lower bound for the open-ended 3).
pub fn check(
    qos: Option<QosClass>,
    observed_adj: i32,
    node_capacity_bytes: Option<u64>,
) -> QosCheck {
    let mut out = special_values(qos, observed_adj);
    let Some(qos) = qos else {
        if out.note.is_none() {
            out.note = Some(match observed_adj {
                0 => "oom_score_adj 0 is the default: nothing adjusted this process".into(),
                -1000 => "oom_score_adj -1000 exempts the process from the OOM killer".into(),
                _ => format!(
                    "oom_score_adj {observed_adj}; the QoS class is unknown, so it cannot be checked"
                ),
            });
        }
        return out;
    };
    out.expected = Some(expected(qos));
    if out.fits.is_some() {
        return out;
    }
    match qos {
        QosClass::Guaranteed => check_guaranteed(&mut out, observed_adj),
        QosClass::BestEffort => check_best_effort(&mut out, observed_adj),
        QosClass::Burstable => check_burstable(&mut out, observed_adj, node_capacity_bytes),
    }
    out
}

/// Values no pod container gets from the kubelet: its own, and the sandbox's.
fn special_values(qos: Option<QosClass>, observed_adj: i32) -> QosCheck {
    let mut out = QosCheck::default();
    match observed_adj {
        KUBELET_OOM_SCORE_ADJ => {
            out.note = Some(
                "oom_score_adj -999 is the kubelet's and kube-proxy's own value, not a pod container's".into(),
            );
            out.fits = qos.map(|_| false);
        }
        SANDBOX_OOM_SCORE_ADJ => {
            out.note = Some(
                "oom_score_adj -998 is the pod sandbox (pause) process, set by the container runtime".into(),
            );
            out.fits = qos.map(|_| true);
        }
        _ => {}
    }
    out
}

fn check_guaranteed(out: &mut QosCheck, observed_adj: i32) {
    let critical = observed_adj == GUARANTEED_OOM_SCORE_ADJ;
    out.fits = Some(critical);
    if !critical {
        out.note = Some(format!(
            "a Guaranteed pod's containers get -997, this one has {observed_adj}: something changed it after \
             the kubelet set it (raising oom_score_adj needs no privilege)"
        ));
    }
}

fn check_best_effort(out: &mut QosCheck, observed_adj: i32) {
    let critical = observed_adj == GUARANTEED_OOM_SCORE_ADJ;
    out.fits = Some(observed_adj == BEST_EFFORT_OOM_SCORE_ADJ || critical);
    out.note = if critical {
        Some("-997 on a BestEffort pod: a system-node-critical pod (e.g. kube-proxy)".into())
    } else if observed_adj != BEST_EFFORT_OOM_SCORE_ADJ {
        Some(format!(
            "a BestEffort pod's containers get 1000, this one has {observed_adj}: something changed it after \
             the kubelet set it"
        ))
    } else {
        None
    };
}

fn check_burstable(out: &mut QosCheck, observed_adj: i32, node_capacity_bytes: Option<u64>) {
    let critical = observed_adj == GUARANTEED_OOM_SCORE_ADJ;
    let in_range =
        (BURSTABLE_MIN_OOM_SCORE_ADJ..=BURSTABLE_MAX_OOM_SCORE_ADJ).contains(&observed_adj);
    out.fits = Some(in_range || critical);
    if critical {
        out.note = Some("-997 on a Burstable pod: a system-node-critical pod".into());
        return;
    }
    if !in_range {
        out.note = Some(format!(
            "a Burstable pod's containers get 3..=999, this one has {observed_adj}{}: something changed it \
             after the kubelet set it",
            if observed_adj == BEST_EFFORT_OOM_SCORE_ADJ {
                " (1000 is BestEffort's; the kubelet turns 1000 into 999)"
            } else {
                ""
            }
        ));
        return;
    }
    match node_capacity_bytes.and_then(|cap| estimate_request(observed_adj, cap)) {
        Some((min, max)) if max == u64::MAX => {
            out.estimated_request_bytes = Some(min);
            out.note = Some(format!(
                "oom_score_adj 3 means a memory request of at least {} (99.7% of the node's memory or more)",
                Bytes(min)
            ));
        }
        Some((min, max)) => {
            out.estimated_request_bytes = Some(min + (max - min) / 2);
            out.note = Some(format!(
                "oom_score_adj {observed_adj} means a memory request between {} and {}",
                Bytes(min),
                Bytes(max)
            ));
        }
        None => {
            out.note = Some(
                "the node's memory capacity is unknown, so the request cannot be estimated".into(),
            );
        }
    }
}

fn expected(qos: QosClass) -> String {
    match qos {
        QosClass::Guaranteed => "-997".into(),
        QosClass::BestEffort => "1000".into(),
        QosClass::Burstable => {
            format!("{BURSTABLE_MIN_OOM_SCORE_ADJ}..={BURSTABLE_MAX_OOM_SCORE_ADJ}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;

    #[test]
    fn worked_example_256mi_on_16gi_is_985() {
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 256 * MI, 16 * GI),
            985
        );
    }

    /// The cases of kubernetes/kubernetes pkg/kubelet/qos/policy_test.go
    /// (TestGetContainerOOMScoreAdjust, -997 era).
    #[test]
    fn kubernetes_policy_test_cases() {
        const STANDARD: u64 = 8_000_000_000;
        // cpuLimit: Burstable without a memory request.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 0, 4_000_000_000),
            999
        );
        // memoryLimitCPURequest: limit 10G, request defaults... the pod is Burstable, memory request 0.
        assert_eq!(kubelet_oom_score_adj(QosClass::Burstable, 0, STANDARD), 999);
        // zeroMemoryLimit and noRequestLimit: BestEffort.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::BestEffort, 0, 7_230_457_451),
            1000
        );
        assert_eq!(
            kubelet_oom_score_adj(QosClass::BestEffort, 0, 4_000_000_000),
            1000
        );
        // equalRequestLimitCPUMemory: Guaranteed.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Guaranteed, 10_000_000_000, 123_456_789),
            -997
        );
        // cpuUnlimitedMemoryLimitedWithRequests: half of the memory -> 495..=505.
        let adj = kubelet_oom_score_adj(QosClass::Burstable, STANDARD / 2, STANDARD);
        assert!((495..=505).contains(&adj), "{adj}");
        assert_eq!(adj, 500);
        // requestNoLimit: capacity - 1 -> clamped to 3.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, STANDARD - 1, STANDARD),
            3
        );
    }

    #[test]
    fn clamps() {
        // Below 3 becomes 3, including requests above capacity.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 16 * GI, 16 * GI),
            3
        );
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 64 * GI, 16 * GI),
            3
        );
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 997 * (16 * GI) / 1000 + 1, 16 * GI),
            3
        );
        // 4 is reachable: share 996.
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 996 * (16 * GI) / 1000 + 1, 16 * GI),
            4
        );
        // Exactly 1000 becomes 999: a tiny request.
        assert_eq!(kubelet_oom_score_adj(QosClass::Burstable, 1, 16 * GI), 999);
        assert_eq!(
            kubelet_oom_score_adj(QosClass::Burstable, 16 * MI, 16 * GI),
            999
        );
        // Unknown capacity never divides by zero.
        assert_eq!(kubelet_oom_score_adj(QosClass::Burstable, MI, 0), 999);
        assert_eq!(kubelet_oom_score_adj(QosClass::Burstable, u64::MAX, 1), 3);
    }

    #[test]
    fn estimate_inverts_the_formula_exactly() {
        for cap in [16 * GI, 8_000_000_000, 4 * GI + 12_345, 3_999] {
            for adj in BURSTABLE_MIN_OOM_SCORE_ADJ..=BURSTABLE_MAX_OOM_SCORE_ADJ {
                let Some((min, max)) = estimate_request(adj, cap) else {
                    assert!(cap < 1000 * 1000, "no range for {adj} on {cap}");
                    continue;
                };
                assert_eq!(
                    kubelet_oom_score_adj(QosClass::Burstable, min, cap),
                    adj,
                    "min of {adj} on {cap}"
                );
                assert_eq!(
                    kubelet_oom_score_adj(QosClass::Burstable, max, cap),
                    adj,
                    "max of {adj} on {cap}"
                );
                if min > 0 {
                    assert_ne!(
                        kubelet_oom_score_adj(QosClass::Burstable, min - 1, cap),
                        adj,
                        "below {adj}"
                    );
                }
                if max < u64::MAX {
                    assert_ne!(
                        kubelet_oom_score_adj(QosClass::Burstable, max + 1, cap),
                        adj,
                        "above {adj}"
                    );
                }
            }
        }
        let (min, max) = estimate_request(985, 16 * GI).expect("a range");
        assert!(min <= 256 * MI && 256 * MI <= max);
        assert_eq!(estimate_request(1000, 16 * GI), None);
        assert_eq!(estimate_request(2, 16 * GI), None);
        assert_eq!(estimate_request(-997, 16 * GI), None);
        assert_eq!(estimate_request(500, 0), None);
        assert_eq!(estimate_request(3, 16 * GI).map(|r| r.1), Some(u64::MAX));
    }

    #[test]
    fn check_flags_adj_that_does_not_fit() {
        let c = check(Some(QosClass::Guaranteed), 985, Some(16 * GI));
        assert_eq!(c.fits, Some(false));
        assert_eq!(c.expected.as_deref(), Some("-997"));
        assert!(c.note.as_deref().is_some_and(|n| n.contains("985")));

        let c = check(Some(QosClass::BestEffort), 999, None);
        assert_eq!(c.fits, Some(false));
        assert_eq!(
            check(Some(QosClass::BestEffort), 1000, None).fits,
            Some(true)
        );
        assert_eq!(
            check(Some(QosClass::BestEffort), -997, None).fits,
            Some(true),
            "node-critical"
        );

        let c = check(Some(QosClass::Burstable), 985, Some(16 * GI));
        assert_eq!(c.fits, Some(true));
        assert_eq!(c.expected.as_deref(), Some("3..=999"));
        let est = c.estimated_request_bytes.expect("an estimate");
        assert!(est.abs_diff(256 * MI) < 16 * MI, "{est}");
        assert!(c.note.as_deref().is_some_and(|n| n.contains("MiB")));

        let c = check(Some(QosClass::Burstable), 1000, Some(16 * GI));
        assert_eq!(c.fits, Some(false));
        assert!(c.note.as_deref().is_some_and(|n| n.contains("BestEffort")));

        let c = check(Some(QosClass::Burstable), 985, None);
        assert_eq!((c.fits, c.estimated_request_bytes), (Some(true), None));
        assert!(c.note.as_deref().is_some_and(|n| n.contains("unknown")));

        let c = check(Some(QosClass::Burstable), -998, None);
        assert_eq!(c.fits, Some(true));
        assert!(c.note.as_deref().is_some_and(|n| n.contains("pause")));
        let c = check(None, -999, None);
        assert_eq!(c.fits, None);
        assert!(c.note.as_deref().is_some_and(|n| n.contains("kubelet")));
        assert_eq!(
            check(Some(QosClass::Guaranteed), -999, None).fits,
            Some(false)
        );
        assert_eq!(check(None, 0, None).fits, None);
    }
}
