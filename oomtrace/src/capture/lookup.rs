//! `/proc/<pid>/cgroup` of dying victims, read on a thread beside the
//! draining of the ring buffer and the kernel log.
//!
//! Without the `tp_btf` walk (kernels before 6.9 and their backports), the
//! kernel log names a victim's cgroup only in its rate-limited summary: the
//! victim's own `/proc` entry, read while it dies, is the only other place.
//! The read races the reaper; it is made at once, but never in front of the
//! records that are waiting to be drained.
//!
//! The same thread reads where the memory was ([`super::memstat`]): the
//! `memory.stat` of the cgroup whose limit was hit (or, when that is not
//! known yet, of the victim's cgroup and its ancestors) and the node's
//! meminfo, as close to the kill as the agent can (the victim's anonymous
//! memory is freed within milliseconds of the kill; tmpfs pages stay).

use std::{
    path::PathBuf,
    sync::mpsc::{self, SyncSender, TrySendError},
    thread,
    time::Duration,
};

use tokio::sync::mpsc::Sender;

use super::{
    Input,
    memstat::{self, MemoryTargets},
};
use crate::{cgroupfs::CgroupFs, proc::victim_cgroup};

/// Lookups waiting; beyond this a victim is reported without it.
const QUEUE: usize = 1024;

/// Asks the lookup thread for victims' cgroups; answers come back as
/// [`Input::ProcCgroup`] on the correlator's input channel.
pub struct ProcLookup {
    requests: SyncSender<Request>,
}

/// One victim to look up.
#[derive(Debug)]
pub struct Request {
    pub pid: u32,
    /// CLOCK_MONOTONIC time of the kill: a process started after it holds
    /// a recycled pid.
    pub killed_at: Option<Duration>,
    /// The victim's cgroup when a record already named it (tp_btf's walk).
    pub cgroup: Option<String>,
    /// What to read of where the memory was.
    pub memory: MemoryTargets,
}

/// What the thread looks up.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    pub proc_root: PathBuf,
    /// Answer with the victim's cgroup ([`Input::ProcCgroup`]).
    pub cgroups: bool,
    /// Answer with where the memory was ([`Input::Memory`]).
    pub memory: Option<CgroupFs>,
}

impl ProcLookup {
    /// Starts the thread; it ends when the handle or the input channel is gone.
    pub fn spawn(cfg: LookupConfig, inputs: Sender<Input>) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::sync_channel::<Request>(QUEUE);
        thread::Builder::new()
            .name("proc-lookup".into())
            .spawn(move || {
                while let Ok(r) = rx.recv() {
                    let pid = r.pid;
                    let from_proc = (cfg.cgroups || r.cgroup.is_none())
                        .then(|| victim_cgroup(&cfg.proc_root, pid, r.killed_at))
                        .flatten();
                    let memory = cfg.memory.as_ref().map(|cgfs| {
                        let cgroup = r.cgroup.as_deref().or(from_proc.as_deref());
                        memstat::read(cgfs, &cfg.proc_root, &r.memory, cgroup)
                    });
                    if cfg.cgroups
                        && inputs
                            .blocking_send(Input::ProcCgroup {
                                pid,
                                cgroup: from_proc,
                            })
                            .is_err()
                    {
                        return;
                    }
                    if let Some(memory) = memory
                        && inputs.blocking_send(Input::Memory { pid, memory }).is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Self { requests })
    }

    /// Queues a lookup; `false` when the queue is full or the thread is
    /// gone (the victim is then reported without it).
    pub fn request(&self, request: Request) -> bool {
        match self.requests.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}
