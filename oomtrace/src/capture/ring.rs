//! Decoding of the eBPF programs' ring-buffer records into [`Input`]s.
//!
//! Pure: bytes in, an input out. The record's ABI version and kind are
//! checked by [`oomtrace_common::decode`]; the classic tracepoint's raw
//! record is decoded with the layout read from its `format` file.

use oomtrace_common::{
    BtfVictim, DECISION_HAS_CHOSEN, DECISION_HAS_MEMCG, DecodeError, Header, KIND_BTF_VICTIM,
    LINEAGE_MEMCG_COMPARED, LINEAGE_NS, LINEAGE_ONLY_CHILD, LINEAGE_PARENT,
    LINEAGE_PARENT_SAME_MEMCG, Record, SIGNAL_HAS_ADJ, SIGNAL_HAS_TASK, Signal, TpVictim,
    VICTIM_HAS_ADJ, VICTIM_OOM_SIGKILL, c_str,
};

use super::{
    Chosen, Decision, Input, Lineage, Parent, RecordMeta, SignalSighting, TaskSighting, TpSighting,
    Trigger,
};
use crate::{
    capture::tracefs::{MarkVictimFields, MarkVictimLayout},
    correlate::walk::Walk,
    report::Constraint,
};

/// Decodes ring-buffer records with what this kernel's programs need.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The classic tracepoint's record layout (`None` when it is not attached).
    pub layout: Option<MarkVictimLayout>,
    pub page_size: u64,
    /// A signal hook is attached: it parks the kernel's own SIGKILLs for
    /// the `mark_victim` programs, so a victim record without
    /// `VICTIM_OOM_SIGKILL` was not killed by the OOM killer. Without it the
    /// flag can never be set and says nothing.
    pub signal_hook: bool,
}

impl Decoder {
    /// One record; an error means agent and eBPF object are out of step.
    pub fn decode(&self, bytes: &[u8]) -> Result<Input, DecodeError> {
        Ok(match oomtrace_common::decode(bytes)? {
            Record::TpVictim(ev) => Input::Tracepoint(TpSighting {
                meta: meta(&ev.header),
                fields: self.tp_fields(&ev),
                oom_sigkill: self
                    .signal_hook
                    .then_some(ev.flags & VICTIM_OOM_SIGKILL != 0),
            }),
            Record::BtfVictim(ev) => Input::TpBtf(self.task(&ev)),
            Record::GroupMember(ev) => Input::GroupMember(self.task(&ev)),
            Record::Decision(d) => Input::Decision(Decision {
                meta: meta(&d.header),
                memcg: d.flags & DECISION_HAS_MEMCG != 0,
                constraint: Constraint::from_kernel(d.constraint),
                order: d.order,
                gfp_mask: d.gfp_mask,
                totalpages: d.totalpages,
                chosen: (d.flags & DECISION_HAS_CHOSEN != 0).then(|| Chosen {
                    pid: d.chosen_pid,
                    tgid: d.chosen_tgid,
                    comm: text(&d.chosen_comm),
                    points: d.chosen_points,
                    oom_score_adj: d.chosen_adj,
                    start_time_ns: nonzero(d.chosen_start_time_ns),
                    lineage: lineage(&d.chosen_lineage),
                }),
                domain: Walk::decode(&d.domain, self.page_size),
                chosen_memcg: Walk::decode(&d.chosen_memcg, self.page_size),
                trigger_memcg: Walk::decode(&d.trigger_memcg, self.page_size),
            }),
            Record::Signal(s) => Input::Signal(self.signal(&s)),
        })
    }

    fn signal(&self, s: &Signal) -> SignalSighting {
        let task = s.flags & SIGNAL_HAS_TASK != 0;
        SignalSighting {
            meta: meta(&s.header),
            sig: s.sig,
            code: s.code,
            group: s.group != 0,
            result: s.result,
            target_pid: s.target_pid,
            target_tgid: task.then_some(s.target_tgid),
            target_comm: text(&s.target_comm),
            target_start_time_ns: task.then(|| nonzero(s.target_start_time_ns)).flatten(),
            target_oom_score_adj: (s.flags & SIGNAL_HAS_ADJ != 0).then_some(s.target_oom_score_adj),
            walk: Walk::decode(&s.memcg, self.page_size),
        }
    }

    fn tp_fields(&self, ev: &TpVictim) -> MarkVictimFields {
        let len = (ev.record_len as usize).min(ev.record.len());
        let mut fields = match &self.layout {
            Some(l) if len > 0 => l.decode(&ev.record[..len]),
            _ => MarkVictimFields::default(),
        };
        // The program read the pid itself at the format file's offset.
        fields.pid = fields.pid.or(Some(ev.pid));
        fields
    }

    fn task(&self, v: &BtfVictim) -> TaskSighting {
        TaskSighting {
            meta: meta(&v.header),
            pid: v.pid,
            tgid: v.tgid,
            comm: text(&v.comm),
            oom_score_adj: (v.flags & VICTIM_HAS_ADJ != 0).then_some(v.oom_score_adj),
            uid: v.uid,
            start_time_ns: nonzero(v.start_time_ns),
            walk: Walk::decode(&v.memcg, self.page_size),
            lineage: lineage(&v.lineage),
            // Only mark_victim's record can follow the kill's SIGKILL.
            oom_sigkill: (self.signal_hook && v.header.kind == KIND_BTF_VICTIM)
                .then_some(v.flags & VICTIM_OOM_SIGKILL != 0),
        }
    }
}

/// What the kernel side read of a task's PID namespace and parent.
fn lineage(l: &oomtrace_common::Lineage) -> Option<Lineage> {
    if l.flags & LINEAGE_NS == 0 {
        return None;
    }
    Some(Lineage {
        ns_level: l.ns_level,
        ns_pid: l.ns_pid,
        parent: (l.flags & LINEAGE_PARENT != 0).then(|| Parent {
            pid: l.ppid,
            ns_pid: l.ns_ppid,
            comm: text(&l.parent_comm),
            only_child: l.flags & LINEAGE_ONLY_CHILD != 0,
        }),
        parent_same_memcg: (l.flags & LINEAGE_MEMCG_COMPARED != 0)
            .then_some(l.flags & LINEAGE_PARENT_SAME_MEMCG != 0),
    })
}

/// The kernel side writes 0 for a value it could not read.
fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn meta(h: &Header) -> RecordMeta {
    RecordMeta {
        ktime_ns: h.ktime_ns,
        trigger: Trigger {
            tid: h.trigger_tid,
            tgid: h.trigger_tgid,
            comm: text(&h.trigger_comm),
        },
    }
}

/// A fixed-size kernel string buffer as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_str(bytes)).into_owned()
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use oomtrace_common::{
        ABI_VERSION, COMM_LEN, CgroupLevel, CgroupWalk, KIND_DECISION, KIND_GROUP_MEMBER,
        KIND_TP_VICTIM, MAX_DEPTH, NAME_LEN, TP_RECORD_MAX, as_bytes,
    };

    use super::*;
    use crate::capture::tracefs::parse_format;

    /// The extended `mark_victim` format of this project's 6.18 host and one
    /// record it produced (see tests/data/tracefs/README.md).
    const FORMAT: &str = include_str!("../../tests/data/tracefs/mark_victim-6.18.format");
    const RECORD: &[u8] = include_bytes!("../../tests/data/tracefs/mark_victim-6.18.record.bin");

    fn header(kind: u16, len: usize) -> Header {
        let mut h = Header::zeroed();
        h.version = ABI_VERSION;
        h.kind = kind;
        h.len = len as u32;
        h.ktime_ns = 5_000;
        h.trigger_tid = 7;
        h.trigger_tgid = 6;
        h.trigger_comm[..3].copy_from_slice(b"dd\0");
        h
    }

    /// pid 7 of a container's namespace, the only child of tini (pid 1).
    fn tini_child() -> oomtrace_common::Lineage {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"tini");
        oomtrace_common::Lineage {
            flags: LINEAGE_NS
                | LINEAGE_PARENT
                | LINEAGE_ONLY_CHILD
                | LINEAGE_MEMCG_COMPARED
                | LINEAGE_PARENT_SAME_MEMCG,
            ns_level: 1,
            ns_pid: 7,
            ns_ppid: 1,
            ppid: 4100,
            _pad: 0,
            parent_comm: comm,
        }
    }

    fn walk(names: &[&str]) -> CgroupWalk {
        let mut w = CgroupWalk {
            depth: names.len() as u32,
            flags: 0,
            levels: [CgroupLevel {
                id: 0,
                usage_pages: 10,
                max_pages: 20,
                name: [0; NAME_LEN],
            }; MAX_DEPTH],
        };
        for (i, n) in names.iter().enumerate() {
            w.levels[i].name[..n.len()].copy_from_slice(n.as_bytes());
        }
        w
    }

    #[test]
    fn a_real_tracepoint_record_decodes_with_its_format() {
        let layout =
            MarkVictimLayout::from_format(&parse_format(FORMAT).expect("format")).expect("layout");
        let mut record = [0u8; TP_RECORD_MAX];
        let n = RECORD.len().min(TP_RECORD_MAX);
        record[..n].copy_from_slice(&RECORD[..n]);
        let ev = TpVictim {
            header: header(KIND_TP_VICTIM, size_of::<TpVictim>()),
            pid: 0,
            record_len: n as u32,
            flags: VICTIM_OOM_SIGKILL,
            _pad: 0,
            record,
        };
        let decoder = Decoder {
            layout: Some(layout.clone()),
            page_size: 4096,
            signal_hook: true,
        };
        let Ok(Input::Tracepoint(tp)) = decoder.decode(as_bytes(&ev)) else {
            panic!("not a tracepoint input");
        };
        assert_eq!(tp.fields, layout.decode(&RECORD[..n]));
        assert!(tp.fields.pid.is_some_and(|p| p > 0));
        assert_eq!(
            tp.oom_sigkill,
            Some(true),
            "the OOM killer's SIGKILL was seen"
        );
        assert_eq!(tp.meta.trigger.comm, "dd");
        assert_eq!(tp.meta.trigger.tid, 7);
        // Without a layout only the pid the program read is known.
        let bare = Decoder {
            layout: None,
            page_size: 4096,
            signal_hook: true,
        };
        let Ok(Input::Tracepoint(tp)) = bare.decode(as_bytes(&TpVictim {
            pid: 99,
            flags: 0,
            ..ev
        })) else {
            panic!("not a tracepoint input");
        };
        assert_eq!(tp.pid(), 99);
        assert_eq!(tp.fields.comm, None);
        assert_eq!(
            tp.oom_sigkill,
            Some(false),
            "marked without the OOM killer's SIGKILL"
        );
        // Without the signal hook the flag cannot be set: nothing is known.
        let blind = Decoder {
            signal_hook: false,
            ..bare
        };
        for flags in [0, VICTIM_OOM_SIGKILL] {
            let Ok(Input::Tracepoint(tp)) = blind.decode(as_bytes(&TpVictim { flags, ..ev }))
            else {
                panic!("not a tracepoint input");
            };
            assert_eq!(
                tp.oom_sigkill, None,
                "flags {flags}: unknown without the hook"
            );
        }
    }

    #[test]
    fn task_and_decision_records_decode_to_named_fields() {
        let decoder = Decoder {
            layout: None,
            page_size: 4096,
            signal_hook: true,
        };
        let v = BtfVictim {
            header: header(KIND_BTF_VICTIM, size_of::<BtfVictim>()),
            pid: 42,
            tgid: 42,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            oom_score_adj: 985,
            uid: 1000,
            flags: VICTIM_HAS_ADJ | VICTIM_OOM_SIGKILL,
            _pad: 0,
            start_time_ns: 12_345,
            lineage: tini_child(),
            memcg: walk(&["app", "demo", ""]),
        };
        let Ok(Input::TpBtf(t)) = decoder.decode(as_bytes(&v)) else {
            panic!("not a tp_btf input");
        };
        assert_eq!(
            (t.pid, t.comm.as_str(), t.oom_score_adj),
            (42, "python3", Some(985))
        );
        let leaf = t.walk.as_ref().and_then(|w| w.leaf()).expect("walk");
        assert_eq!(leaf.path, "/demo/app");
        assert_eq!(leaf.limit_bytes, Some(20 * 4096));
        assert_eq!(t.oom_sigkill, Some(true));
        assert_eq!(
            t.lineage,
            Some(Lineage {
                ns_level: 1,
                ns_pid: 7,
                parent: Some(Parent {
                    pid: 4100,
                    ns_pid: 1,
                    comm: "tini".into(),
                    only_child: true,
                }),
                parent_same_memcg: Some(true),
            })
        );
        let no_adj = BtfVictim {
            flags: 0,
            lineage: oomtrace_common::Lineage::zeroed(),
            ..v
        };
        let Ok(Input::TpBtf(t)) = decoder.decode(as_bytes(&no_adj)) else {
            panic!("not a tp_btf input");
        };
        assert_eq!(t.oom_score_adj, None, "an unread adj is not 0");
        assert_eq!(t.oom_sigkill, Some(false));
        assert_eq!(t.lineage, None, "nothing read is not pid 0 of level 0");
        let blind = Decoder {
            signal_hook: false,
            ..decoder.clone()
        };
        let Ok(Input::TpBtf(t)) = blind.decode(as_bytes(&v)) else {
            panic!("not a tp_btf input");
        };
        assert_eq!(t.oom_sigkill, None, "unknown without the signal hook");
        // A group member's scan comes before its kill: never flagged.
        let member = BtfVictim {
            header: header(KIND_GROUP_MEMBER, size_of::<BtfVictim>()),
            ..v
        };
        let Ok(Input::GroupMember(m)) = decoder.decode(as_bytes(&member)) else {
            panic!("not a group member input");
        };
        assert_eq!(m.oom_sigkill, None, "a scan says nothing of the kill");
        assert!(m.lineage.is_some());

        let d = oomtrace_common::Decision {
            header: header(KIND_DECISION, size_of::<oomtrace_common::Decision>()),
            flags: DECISION_HAS_MEMCG | DECISION_HAS_CHOSEN,
            constraint: 3,
            order: 0,
            gfp_mask: 0xcc0,
            totalpages: 8192,
            chosen_points: 7000,
            chosen_pid: 42,
            chosen_tgid: 42,
            chosen_comm: *b"python3\0\0\0\0\0\0\0\0\0",
            chosen_adj: 985,
            _pad: 0,
            chosen_start_time_ns: 0,
            chosen_lineage: tini_child(),
            domain: walk(&["demo", ""]),
            chosen_memcg: walk(&["app", "demo", ""]),
            trigger_memcg: walk(&["app", "demo", ""]),
        };
        let Ok(Input::Decision(dec)) = decoder.decode(as_bytes(&d)) else {
            panic!("not a decision input");
        };
        assert!(dec.memcg);
        assert_eq!(dec.constraint, Some(Constraint::Memcg));
        let chosen = dec.chosen.expect("chosen");
        assert_eq!(
            chosen.lineage.and_then(|l| l.parent).map(|p| p.comm),
            Some("tini".into())
        );
        assert_eq!(
            (chosen.pid, chosen.points, chosen.oom_score_adj),
            (42, 7000, 985)
        );
        assert_eq!(
            dec.domain.and_then(|w| w.leaf().map(|l| l.path.clone())),
            Some("/demo".to_string())
        );
        let none = oomtrace_common::Decision { flags: 0, ..d };
        let Ok(Input::Decision(dec)) = decoder.decode(as_bytes(&none)) else {
            panic!("not a decision input");
        };
        assert!(!dec.memcg && dec.chosen.is_none());
    }

    #[test]
    fn records_of_another_abi_are_errors() {
        let decoder = Decoder {
            layout: None,
            page_size: 4096,
            signal_hook: true,
        };
        let mut h = header(KIND_TP_VICTIM, 48);
        h.version = ABI_VERSION + 1;
        assert!(matches!(
            decoder.decode(as_bytes(&h)),
            Err(DecodeError::Version(_))
        ));
    }
}
