//! The replicas of one job run on this node, as its supervisor keeps them: their exits, the time
//! limit and stopping.
//!
//! The supervisor reaps its children itself and hands each exit to [`Replicas::exited`]. The
//! job's share on this node ends when every replica has exited; then whatever they left running
//! is killed: everything in the run's cgroup, or without one, in the replicas' process groups.
//! Stopping (a kill order or the time limit) sends SIGTERM to every replica's process group and
//! every process of the cgroup, and SIGKILL after the grace period to whatever still runs, even
//! if the replicas themselves have exited.

use crate::cgroup::JobCgroup;
use crate::launch::{spawn_replica, ReplicaPlan, CHILD_STACK};
use crate::record::StepSpec;
use cm_common::job::{ExitStatus, NodeEnd, NodeEndCause, NodeUsage, ReplicaExit};
use cm_common::Timestamp;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
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
    cgroup: Option<JobCgroup>,
    /// The CPU time of the supervisor's collected children before the run, for the run's CPU
    /// time where no cgroup counts it.
    children_cpu_before: Duration,
}

/// Collects the exits of what the run left behind and the cgroup killed: the supervisor's
/// children once orphaned ([`crate::supervisor`] is their subreaper). Until they are collected
/// they still count against the cgroup's processes. Bounded: a process the kill cannot reach
/// (one that left the cgroup) is left running.
fn reap_leftovers() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return, // ECHILD: none left
        }
    }
}

/// The CPU time, user and system, of every child the supervisor has collected so far (and of
/// their collected children).
fn children_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(Duration::ZERO, |usage| {
        let time = |t: nix::sys::time::TimeVal| {
            Duration::new(u64::try_from(t.tv_sec()).unwrap_or(0), u32::try_from(t.tv_usec()).unwrap_or(0) * 1000)
        };
        time(usage.user_time()) + time(usage.system_time())
    })
}

impl Replicas {
    /// Starts this node's replicas of `job`. If any cannot start, those already started are
    /// killed and collected, and the reason returned. How many there may be is bounded by the
    /// head (`limits.max_procs_per_cpu`) and by the user's process limit, so the loop is short.
    /// `pmi`: each local rank's end of its PMI connection, in order, and the job's rank count.
    pub fn start(
        spec: &StepSpec,
        mut cgroup: Option<JobCgroup>,
        pmi: Option<(&[OwnedFd], u64)>,
    ) -> Result<Replicas, String> {
        let (job, node) = (&spec.job, &spec.node);
        let node_rank = job
            .nodes
            .iter()
            .position(|n| &n.node == node)
            .ok_or_else(|| format!("job {} is not placed on node {node}", job.id))?;
        let mut replicas: Vec<Replica> = Vec::new();
        let mut stack = vec![0u8; CHILD_STACK];
        let cgroup_procs = cgroup.as_ref().map(JobCgroup::procs_files).unwrap_or_default();
        let cpus = spec.limits.as_ref().map_or(&[][..], |l| &l.cpus[..]);
        let children_cpu_before = children_cpu();
        for local_rank in 0..job.spec.procs_per_node {
            let plan = ReplicaPlan {
                job,
                node,
                node_rank,
                local_rank,
                run_as: spec.run_as.as_ref(),
                gpus: spec.gpus.as_deref(),
                cpus,
                cgroup_procs: &cgroup_procs,
                pmi: pmi.and_then(|(fds, size)| fds.get(local_rank as usize).map(|fd| (fd.as_raw_fd(), size))),
            };
            match spawn_replica(&plan, &mut stack) {
                Ok(pid) => replicas.push(Replica { rank: plan.rank(), pid, exit: None }),
                Err(e) => {
                    // Killed and collected here: no zombie outlives a start that failed.
                    for started in &replicas {
                        let _ = killpg(started.pid, Signal::SIGKILL);
                    }
                    if let Some(cgroup) = &cgroup {
                        cgroup.kill_all();
                    }
                    for started in &replicas {
                        let _ = nix::sys::wait::waitpid(started.pid, None);
                    }
                    if let Some(cgroup) = &mut cgroup {
                        cgroup.remove();
                    }
                    return Err(e);
                }
            }
        }
        let deadline = job.spec.time_limit().map(|limit| Instant::now() + limit);
        let kill_grace = Duration::from_millis(spec.kill_grace_ms);
        Ok(Replicas { replicas, kill_grace, deadline, stopping: None, cgroup, children_cpu_before })
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

    /// Whether the run is being stopped and a process it started still runs within the grace
    /// period. Its end waits for them: a replica's shell dies of SIGTERM at once, but the
    /// program it started may be cleaning up, and has the grace period to do it.
    pub fn lingering(&self, now: Instant) -> bool {
        let Some(stopping) = &self.stopping else { return false };
        if stopping.sigkilled || stopping.sigkill_at <= now {
            return false;
        }
        match &self.cgroup {
            Some(cgroup) => !cgroup.pids().is_empty(),
            None => self.replicas.iter().any(|r| killpg(r.pid, None).is_ok()),
        }
    }

    /// The node's end of the run, once every replica has exited. Whatever the replicas started in
    /// the background ends with the job; then the cgroup says what the run used, and goes.
    pub fn end(&mut self) -> NodeEnd {
        self.signal_all(Signal::SIGKILL, true);
        let replicas =
            self.replicas.iter().filter_map(|r| r.exit.map(|status| ReplicaExit { rank: r.rank, status })).collect();
        let cause = self.stopping.as_ref().map_or(NodeEndCause::Exited, |s| s.cause.clone());
        let usage = match &mut self.cgroup {
            // `signal_all` above has killed everything in it.
            Some(cgroup) => {
                reap_leftovers();
                let usage = cgroup.usage();
                cgroup.remove();
                usage
            }
            None => NodeUsage::default(),
        };
        // Without a cgroup (or its CPU accounting), the replicas' own times, with their children's.
        let cpu_time_ms = usage.cpu_time_ms.or_else(|| {
            let spent = children_cpu().saturating_sub(self.children_cpu_before);
            Some(u64::try_from(spent.as_millis()).unwrap_or(u64::MAX))
        });
        NodeEnd { ended_at: Timestamp::now(), cause, replicas, usage: Some(NodeUsage { cpu_time_ms, ..usage }) }
    }

    /// Signals the replicas' process groups (`include_exited`: those of exited ones too) and
    /// every process in the run's cgroup.
    fn signal_all(&self, signal: Signal, include_exited: bool) {
        for replica in self.replicas.iter().filter(|r| include_exited || r.exit.is_none()) {
            // ESRCH just means the group is already gone.
            let _ = killpg(replica.pid, signal);
        }
        if let Some(cgroup) = &self.cgroup {
            if signal == Signal::SIGKILL {
                cgroup.kill_all();
            } else {
                cgroup.signal_all(signal);
            }
        }
    }

    /// Begins stopping: SIGTERM now, SIGKILL after the grace period.
    pub fn stop(&mut self, cause: NodeEndCause) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(?cause, "stopping the job");
        self.signal_all(Signal::SIGTERM, false);
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
            self.signal_all(Signal::SIGKILL, false);
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
