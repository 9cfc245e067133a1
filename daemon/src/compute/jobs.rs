//! The replicas of a job run on this node, as its supervisor ([`super::step`]) keeps them:
//! their exits, time limit and kills.
//!
//! Each replica's process is reaped by a small waiter thread that sends its exit status to the
//! compute loop. A job's share ends when all its replicas have exited; then any processes they
//! left behind in their process groups are killed, and the end is reported to the head.
//! Stopping a job (kill or time limit) sends SIGTERM to every replica's process group and
//! SIGKILL after the grace period.

use super::launch::{spawn_replica, ReplicaPlan};
use cm_common::job::{ExitStatus, Job, JobRun, NodeEnd, NodeEndCause, ReplicaExit};
use cm_common::{JobId, NodeId, Timestamp};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// A replica's exit, from its waiter thread.
#[derive(Debug)]
pub struct ReplicaExited {
    pub job: JobId,
    pub rank: u64,
    pub status: ExitStatus,
}

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

struct RunningJob {
    run: u32,
    replicas: Vec<Replica>,
    deadline: Option<Instant>,
    stopping: Option<Stopping>,
}

/// This node's running jobs.
pub struct RunningJobs {
    node: NodeId,
    kill_grace: Duration,
    jobs: BTreeMap<JobId, RunningJob>,
}

fn signal_groups(job: &RunningJob, signal: Signal, include_exited: bool) {
    for replica in job.replicas.iter().filter(|r| include_exited || r.exit.is_none()) {
        // ESRCH just means the group is already gone.
        let _ = killpg(replica.pid, signal);
    }
}

impl RunningJobs {
    pub fn new(node: NodeId, kill_grace: Duration) -> Self {
        RunningJobs { node, kill_grace, jobs: BTreeMap::new() }
    }

    /// Starts this node's replicas of `job`; `on_exit` is called from each replica's waiter thread.
    /// If any replica cannot start, those already started are killed and the error returned.
    pub fn start(
        &mut self,
        job: &Job,
        switch_user: bool,
        on_exit: impl Fn(ReplicaExited) + Send + Clone + 'static,
    ) -> Result<Timestamp, String> {
        let node_rank = job
            .nodes
            .iter()
            .position(|n| n.node == self.node)
            .ok_or_else(|| format!("job {} is not placed on node {}", job.id, self.node))?;
        let mut replicas: Vec<Replica> = Vec::new();
        for local_rank in 0..job.spec.procs_per_node {
            let plan = ReplicaPlan { job, node: &self.node, node_rank, local_rank, switch_user };
            let rank = plan.rank();
            let mut child = match spawn_replica(&plan) {
                Ok(child) => child,
                Err(e) => {
                    for started in &replicas {
                        let _ = killpg(started.pid, Signal::SIGKILL);
                    }
                    return Err(e);
                }
            };
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let (job_id, on_exit) = (job.id, on_exit.clone());
            let waiter = std::thread::Builder::new().name(format!("wait-{job_id}.{rank}")).spawn(move || {
                let status = match child.wait() {
                    Ok(s) => match (s.code(), s.signal()) {
                        (Some(code), _) => ExitStatus::Exited { code },
                        (None, Some(signal)) => ExitStatus::Signaled { signal },
                        (None, None) => ExitStatus::Exited { code: -1 },
                    },
                    Err(_) => ExitStatus::Exited { code: -1 },
                };
                on_exit(ReplicaExited { job: job_id, rank, status });
            });
            if let Err(e) = waiter {
                tracing::error!(job = %job.id, error = %e, "cannot start a waiter thread");
            }
            replicas.push(Replica { rank, pid, exit: None });
        }
        let deadline = job.spec.time_limit().map(|limit| Instant::now() + limit);
        self.jobs.insert(job.id, RunningJob { run: job.run, replicas, deadline, stopping: None });
        Ok(Timestamp::now())
    }

    /// Records a replica's exit; returns the node's end of the job run once every replica has exited.
    pub fn replica_exited(&mut self, exited: ReplicaExited) -> Option<(JobRun, NodeEnd)> {
        let job = self.jobs.get_mut(&exited.job)?;
        if let Some(replica) = job.replicas.iter_mut().find(|r| r.rank == exited.rank) {
            replica.exit = Some(exited.status);
        }
        if job.replicas.iter().any(|r| r.exit.is_none()) {
            return None;
        }
        let job = self.jobs.remove(&exited.job)?;
        let run = JobRun { job: exited.job, run: job.run };
        // What the replicas started in the background ends with the job.
        signal_groups(&job, Signal::SIGKILL, true);
        let replicas =
            job.replicas.iter().filter_map(|r| r.exit.map(|status| ReplicaExit { rank: r.rank, status })).collect();
        let cause = job.stopping.map_or(NodeEndCause::Exited, |s| s.cause);
        Some((run, NodeEnd { ended_at: Timestamp::now(), cause, replicas }))
    }

    /// Begins stopping a job: SIGTERM now, SIGKILL after the grace period.
    pub fn stop(&mut self, id: JobId, cause: NodeEndCause) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.stopping.is_some() {
            return;
        }
        tracing::info!(job = %id, ?cause, "stopping job");
        signal_groups(job, Signal::SIGTERM, false);
        job.stopping = Some(Stopping { cause, sigkill_at: Instant::now() + self.kill_grace, sigkilled: false });
    }

    /// Applies time limits and grace periods that have run out.
    pub fn enforce(&mut self, now: Instant) {
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.stopping.is_none() && j.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.stop(id, NodeEndCause::TimedOut);
        }
        for (id, job) in &mut self.jobs {
            if let Some(stopping) = &mut job.stopping {
                if !stopping.sigkilled && stopping.sigkill_at <= now {
                    tracing::info!(job = %id, "grace period over, sending SIGKILL");
                    stopping.sigkilled = true;
                    signal_groups(job, Signal::SIGKILL, false);
                }
            }
        }
    }

    /// The next instant at which `enforce` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|j| match &j.stopping {
                None => j.deadline,
                Some(s) if !s.sigkilled => Some(s.sigkill_at),
                Some(_) => None,
            })
            .min()
    }
}
