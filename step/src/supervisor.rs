//! The supervisor's loop: one process per job run and node, like SLURM's slurmstepd, so jobs
//! outlive a restart of the compute daemon.
//!
//! It locks the step file for as long as it lives ([`LockedStep`]), reads its
//! [`StepSpec`](crate::record::StepSpec) from it, starts the node's
//! replicas, and then waits, on one thread, for whichever comes first: a replica's exit
//! (SIGCHLD), the daemon's kill order (SIGTERM; SIGINT too), or the time limit or grace period
//! running out. The signals are blocked and read from a signalfd, so none is lost between two
//! waits and no handler runs. When the last replica has exited it appends the end to the step
//! file and exits.

use crate::record::{LockedStep, StepSpec};
use crate::replicas::Replicas;
use anyhow::Context;
use cm_common::job::{ExitStatus, NodeEnd, NodeEndCause};
use cm_common::Timestamp;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// A supervisor that holds its step file and has not started the job yet.
pub struct Supervisor {
    step: LockedStep,
    spec: StepSpec,
}

/// Runs the supervisor of the step file at `path` until the job's replicas have all exited.
pub fn run(path: &Path) -> anyhow::Result<()> {
    Supervisor::lock(path)?.run()
}

impl Supervisor {
    /// Takes the step file at `path`: from here on, [`record::supervisor_of`](crate::record::supervisor_of)
    /// names this process.
    pub fn lock(path: &Path) -> anyhow::Result<Supervisor> {
        let (step, record) = LockedStep::lock(path)?;
        let spec = record
            .spec
            .with_context(|| format!("{} holds no job (was it written by the compute daemon?)", path.display()))?;
        Ok(Supervisor { step, spec })
    }

    /// Starts the job and supervises it until its replicas have all exited.
    pub fn run(self) -> anyhow::Result<()> {
        let Supervisor { mut step, spec } = self;
        tracing::info!(job = %spec.job.job_run(), "supervising");

        // Blocked before any child exists, so no exit can slip by; children start with an empty mask
        // (each replica's child clears it right before its exec: `launch`).
        let mut mask = SigSet::empty();
        for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
            mask.add(signal);
        }
        mask.thread_block().context("cannot block signals")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("cannot create a signalfd")?;

        let kill_grace = Duration::from_millis(spec.kill_grace_ms);
        let mut replicas = match Replicas::start(&spec.job, &spec.node, spec.switch_user, kill_grace) {
            Ok(replicas) => replicas,
            Err(reason) => {
                tracing::warn!(%reason, "cannot start the job");
                let end = NodeEnd {
                    ended_at: Timestamp::now(),
                    cause: NodeEndCause::LaunchFailed { reason },
                    replicas: vec![],
                };
                return step.append_end(&end);
            }
        };
        loop {
            reap(&mut replicas)?;
            if replicas.all_exited() {
                return step.append_end(&replicas.end());
            }
            let timeout = match replicas.next_deadline() {
                None => PollTimeout::NONE,
                // Rounded up, so the loop never spins through the last fraction of a millisecond.
                Some(at) => {
                    let ms = at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            match poll(&mut [PollFd::new(signals.as_fd(), PollFlags::POLLIN)], timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("cannot wait for signals"),
            }
            while let Some(info) = signals.read_signal().context("cannot read a signal")? {
                let signal = i32::try_from(info.ssi_signo).unwrap_or(0);
                if signal == Signal::SIGTERM as i32 || signal == Signal::SIGINT as i32 {
                    replicas.stop(NodeEndCause::Killed);
                }
                // SIGCHLD: the next `reap` collects every exited child (signals of a kind coalesce).
            }
            replicas.enforce(Instant::now());
        }
    }
}

/// Collects the exit of every child that has exited.
fn reap(replicas: &mut Replicas) -> anyhow::Result<()> {
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited { code }),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signaled { signal: signal as i32 }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) => continue, // stopped or continued: not an exit
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot collect a replica's exit"),
        };
        if !replicas.exited(pid, status) {
            tracing::debug!(%pid, "reaped a process that is not a replica");
        }
    }
}
