//! Incident ids: one per OOM decision, shared by every victim it killed.

/// What makes two victims one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentKey {
    /// BPF time of the decision, when the `oom_kill_process` hook saw it.
    pub decision_ktime: Option<u64>,
    /// The thread that ran the OOM killer.
    pub trigger: Option<u32>,
    pub oom_cgroup: Option<String>,
    /// The cgroup of a memory.oom.group kill (kernel-log mode).
    pub group: Option<String>,
}

/// Assigns incident ids: `<boot id>-<decision time in hex>`.
#[derive(Debug, Default)]
pub struct Incidents {
    last: Option<(IncidentKey, u64, String)>,
}

impl Incidents {
    /// Within this time, victims with the same trigger and OOM domain belong to
    /// one decision when the decision itself was not seen.
    pub const SAME_DECISION_NS: u64 = 20_000_000;

    pub fn assign(&mut self, boot_id: &str, key: &IncidentKey, at_ns: u64) -> String {
        // A seen decision names its incident by itself: every victim the
        // decision record reached gets the same id, whatever came between.
        if let Some(d) = key.decision_ktime {
            let id = format!("{boot_id}-{d:x}");
            self.last = Some((key.clone(), at_ns, id.clone()));
            return id;
        }
        if let Some((last_key, last_ns, id)) = &mut self.last {
            let same = match (key.decision_ktime, last_key.decision_ktime) {
                (Some(a), Some(b)) => a == b,
                _ => {
                    let close = at_ns.abs_diff(*last_ns) < Self::SAME_DECISION_NS;
                    // The kernel prints "Tasks in ... are going to be killed
                    // due to memory.oom.group set" after killing the chosen
                    // task: the first group member follows it.
                    let grouped = key.group.is_some()
                        && (key.group == last_key.group || last_key.group.is_none());
                    let same_trigger = key.trigger.is_some() && key.trigger == last_key.trigger;
                    // Without a trigger (kernel log only) nothing tells two
                    // decisions at one cgroup within this time apart.
                    let unknown = key.trigger.is_none() || last_key.trigger.is_none();
                    close
                        && key.oom_cgroup == last_key.oom_cgroup
                        && (grouped || same_trigger || unknown)
                }
            };
            if same {
                *last_ns = at_ns;
                return id.clone();
            }
        }
        let id = format!("{boot_id}-{:x}", key.decision_ktime.unwrap_or(at_ns));
        self.last = Some((key.clone(), at_ns, id.clone()));
        id
    }
}
