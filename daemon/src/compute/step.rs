//! The job supervisor (the `cmstep DIR` binary): one process per job run and node, like SLURM's
//! slurmstepd, so jobs outlive a restart of the compute daemon.
//!
//! The compute daemon writes `DIR/step.msgpack` ([`StepSpec`]) and starts the supervisor in a
//! process group of its own. The supervisor starts the node's replicas, enforces the time limit,
//! turns SIGTERM (the daemon's kill order) into SIGTERM-then-SIGKILL of every replica, and when
//! the last replica has exited writes how the job ended here to `DIR/end.msgpack` (atomically:
//! written aside, then renamed) and exits. Whichever daemon runs then, the one that started it
//! or a restarted one, reads that file and reports it.

use super::jobs::{ReplicaExited, RunningJobs};
use anyhow::Context;
use cm_common::job::{Job, NodeEnd, NodeEndCause};
use cm_common::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What the daemon tells a supervisor.
pub const SPEC_FILE: &str = "step.msgpack";
/// How the job ended on this node, written by the supervisor.
pub const END_FILE: &str = "end.msgpack";
/// The supervisor's pid, written by the daemon that started it.
pub const PID_FILE: &str = "pid";

/// A supervisor's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSpec {
    pub job: Job,
    pub node: NodeId,
    /// Switch to the job's user (the daemon runs as root).
    pub switch_user: bool,
    pub kill_grace_ms: u64,
}

/// Writes `value` to `dir/name` so that a reader sees all of it or nothing.
pub fn write_atomically<T: Serialize>(dir: &Path, name: &str, value: &T) -> anyhow::Result<()> {
    let bytes = rmp_serde::to_vec_named(value)?;
    let aside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&aside, bytes).with_context(|| format!("cannot write {}", aside.display()))?;
    std::fs::rename(&aside, dir.join(name)).with_context(|| format!("cannot write {name} in {}", dir.display()))?;
    Ok(())
}

/// Reads `dir/name`, `None` if it does not exist.
pub fn read_file<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => {
            Ok(Some(rmp_serde::from_slice(&bytes).with_context(|| format!("{name} in {} is damaged", dir.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {name} in {}", dir.display())),
    }
}

enum StepEvent {
    Exited(ReplicaExited),
    Stop,
}

/// Runs the supervisor in `dir` until the job's replicas have all exited.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let spec: StepSpec = read_file(dir, SPEC_FILE)?.with_context(|| format!("no {SPEC_FILE} in {}", dir.display()))?;
    let (events, inbox) = channel::<StepEvent>();
    let stop = events.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for _ in signals.forever() {
            if stop.send(StepEvent::Stop).is_err() {
                break;
            }
        }
    })?;
    let mut jobs = RunningJobs::new(spec.node.clone(), Duration::from_millis(spec.kill_grace_ms));
    let on_exit = move |exited| {
        let _ = events.send(StepEvent::Exited(exited));
    };
    if let Err(reason) = jobs.start(&spec.job, spec.switch_user, on_exit) {
        tracing::warn!(job = %spec.job.id, %reason, "cannot start the job");
        let end =
            NodeEnd { ended_at: Timestamp::now(), cause: NodeEndCause::LaunchFailed { reason }, replicas: vec![] };
        return write_atomically(dir, END_FILE, &end);
    }
    loop {
        let now = Instant::now();
        let wait = jobs.next_deadline().map_or(Duration::from_secs(60), |d| d.saturating_duration_since(now));
        match inbox.recv_timeout(wait) {
            Ok(StepEvent::Exited(exited)) => {
                if let Some((_, end)) = jobs.replica_exited(exited) {
                    return write_atomically(dir, END_FILE, &end);
                }
            }
            Ok(StepEvent::Stop) => jobs.stop(spec.job.id, NodeEndCause::Killed),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the replicas' waiters are gone"),
        }
        jobs.enforce(Instant::now());
    }
}
