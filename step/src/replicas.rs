//! The replicas of one job run on this node, as its supervisor keeps them: their exits, the time
//! limit and stopping.
//!
//! The supervisor reaps its children itself and hands each exit to [`Replicas::exited`]. The
//! job's share on this node ends when every replica has exited; then whatever they left running
//! in their process groups is killed. Stopping (a kill order or the time limit) sends SIGTERM to
//! every replica's process group and SIGKILL after the grace period.

use crate::launch::{spawn_replica, ReplicaPlan, CHILD_STACK};
use crate::record::RunAs;
use cm_common::job::{ExitStatus, Job, NodeEnd, NodeEndCause, ReplicaExit};
use cm_common::{NodeId, Timestamp};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

struct Replica {
    rank: u64,
    /// Also its process group id.
    pid: Pid,
    exit: Option<ExitStatus>,
}

struct Stopping {
    cause: NodeEndCause,
    sigkill_at: Instant,
    sigkilled: bool,
}

/// One job run's replicas on this node.
pub struct Replicas {
    replicas: Vec<Replica>,
    kill_grace: Duration,
    deadline: Option<Instant>,
    stopping: Option<Stopping>,
}

impl Replicas {
    /// Starts this node's replicas of `job`. If any cannot start, those already started are
    /// killed and collected, and the reason returned. How many there may be is bounded by the
    /// head (`limits.max_procs_per_cpu`) and by the user's process limit, so the loop is short.
    pub fn start(
        job: &Job,
        node: &NodeId,
        run_as: Option<&RunAs>,
        gpus: Option<&[u32]>,
        kill_grace: Duration,
    ) -> Result<Replicas, String> {
        let node_rank = job
            .nodes
            .iter()
            .position(|n| &n.node == node)
            .ok_or_else(|| format!("job {} is not placed on node {node}", job.id))?;
        let mut replicas: Vec<Replica> = Vec::new();
        let mut stack = vec![0u8; CHILD_STACK];
        for local_rank in 0..job.spec.procs_per_node {
            let plan = ReplicaPlan { job, node, node_rank, local_rank, run_as, gpus };
            match spawn_replica(&plan, &mut stack) {
                Ok(pid) => replicas.push(Replica { rank: plan.rank(), pid, exit: None }),
                Err(e) => {
                    // Killed and collected here: no zombie outlives a start that failed.
                    for started in &replicas {
                        let _ = killpg(started.pid, Signal::SIGKILL);
                    }
                    for started in &replicas {
                        let _ = nix::sys::wait::waitpid(started.pid, None);
                    }
                    return Err(e);
                }
            }
        }
        let deadline = job.spec.time_limit().map(|limit| Instant::now() + limit);
        Ok(Replicas { replicas, kill_grace, deadline, stopping: None })
    }

    /// Records the exit of child `pid`; false if it is not one of the replicas.
    pub fn exited(&mut self, pid: Pid, status: ExitStatus) -> bool {
        match self.replicas.iter_mut().find(|r| r.pid == pid) {
            Some(replica) => {
                replica.exit = Some(status);
                true
            }
            None => false,
        }
    }

    pub fn all_exited(&self) -> bool {
        self.replicas.iter().all(|r| r.exit.is_some())
    }

    /// The node's end of the run, once every replica has exited. Whatever the replicas started in
    /// the background ends with the job.
    pub fn end(&self) -> NodeEnd {
        self.signal_groups(Signal::SIGKILL, true);
        let replicas =
            self.replicas.iter().filter_map(|r| r.exit.map(|status| ReplicaExit { rank: r.rank, status })).collect();
        let cause = self.stopping.as_ref().map_or(NodeEndCause::Exited, |s| s.cause.clone());
        NodeEnd { ended_at: Timestamp::now(), cause, replicas }
    }

    fn signal_groups(&self, signal: Signal, include_exited: bool) {
        for replica in self.replicas.iter().filter(|r| include_exited || r.exit.is_none()) {
            // ESRCH just means the group is already gone.
            let _ = killpg(replica.pid, signal);
        }
    }

    /// Begins stopping: SIGTERM now, SIGKILL after the grace period.
    pub fn stop(&mut self, cause: NodeEndCause) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(?cause, "stopping the job");
        self.signal_groups(Signal::SIGTERM, false);
        self.stopping = Some(Stopping { cause, sigkill_at: Instant::now() + self.kill_grace, sigkilled: false });
    }

    /// Applies the time limit or the end of the grace period, if due.
    pub fn enforce(&mut self, now: Instant) {
        if self.stopping.is_none() && self.deadline.is_some_and(|d| d <= now) {
            self.stop(NodeEndCause::TimedOut);
        }
        let due = self.stopping.as_ref().is_some_and(|s| !s.sigkilled && s.sigkill_at <= now);
        if due {
            tracing::info!("grace period over, sending SIGKILL");
            self.signal_groups(Signal::SIGKILL, false);
            if let Some(stopping) = &mut self.stopping {
                stopping.sigkilled = true;
            }
        }
    }

    /// The next instant at which `enforce` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.stopping {
            None => self.deadline,
            Some(s) if !s.sigkilled => Some(s.sigkill_at),
            Some(_) => None,
        }
    }
}
