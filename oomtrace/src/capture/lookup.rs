//! `/proc/<pid>/cgroup` of dying victims, read on a thread beside the
//! draining of the ring buffer and the kernel log.
//!
//! Without the `tp_btf` walk (kernels before 6.9 and their backports), the
//! kernel log names a victim's cgroup only in its rate-limited summary: the
//! victim's own `/proc` entry, read while it dies, is the only other place.
//! The read races the reaper; it is made at once, but never in front of the
//! records that are waiting to be drained.

use std::{
    path::PathBuf,
    sync::mpsc::{self, SyncSender, TrySendError},
    thread,
    time::Duration,
};

use tokio::sync::mpsc::Sender;

use super::Input;
use crate::proc::victim_cgroup;

/// Lookups waiting; beyond this a victim is reported without it.
const QUEUE: usize = 1024;

/// Asks the lookup thread for victims' cgroups; answers come back as
/// [`Input::ProcCgroup`] on the correlator's input channel.
pub struct ProcLookup {
    requests: SyncSender<(u32, Option<Duration>)>,
}

impl ProcLookup {
    /// Starts the thread; it ends when the handle or the input channel is gone.
    pub fn spawn(proc_root: PathBuf, inputs: Sender<Input>) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::sync_channel::<(u32, Option<Duration>)>(QUEUE);
        thread::Builder::new()
            .name("proc-lookup".into())
            .spawn(move || {
                while let Ok((pid, killed_at)) = rx.recv() {
                    let cgroup = victim_cgroup(&proc_root, pid, killed_at);
                    if inputs
                        .blocking_send(Input::ProcCgroup { pid, cgroup })
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Self { requests })
    }

    /// Queues a lookup of `pid`, killed at `killed_at` (CLOCK_MONOTONIC: a
    /// process started after it holds a recycled pid); `false` when the queue
    /// is full or the thread is gone (the victim is then reported without it).
    pub fn request(&self, pid: u32, killed_at: Option<Duration>) -> bool {
        match self.requests.try_send((pid, killed_at)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}
