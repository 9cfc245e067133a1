//! The compute daemon's view of its job supervisors (`cmstep`, crate `cm-step`).
//!
//! Each job run on this node has a step file, `STATE_DIR/jobs/<job>.<run>.step`
//! ([`cm_step::record`]): the supervisor's instructions and, once the job has ended here, how it
//! ended. Its supervisor, forked (or, idle, kept) by the daemon's [`Launcher`], holds the file's
//! lock while it supervises the run. The file is removed only when the head has acknowledged that end, so a daemon
//! restarted at any moment finds every job: still running (the file is locked; its supervisor is
//! adopted), or ended and not yet reported (reported again; the head ignores repeats).
//! Supervisors log to one shared file, `STATE_DIR/cmstep.log`.

use super::launcher::Launcher;
use cm_common::job::{Job, JobRun, NodeEnd, NodeEndCause};
use cm_common::{JobId, NodeId, Resources, Timestamp};
use cm_step::cgroup::{cgroup_name, Hierarchy, JobCgroup, Limits};
use cm_step::record::{self, RunAs, StepSpec};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many ended runs a node remembers, to refuse a late duplicate StartJob.
const REMEMBERED_ENDS: usize = 4096;

struct Step {
    run: u32,
    /// The supervisor; `None` for a run adopted while its step file could not be read or asked
    /// (an I/O error), until a poll can.
    pid: Option<i32>,
    /// What the run holds here; nothing while its step file could not be read.
    per_node: Resources,
    /// The GPUs (indices) it holds here.
    gpus: Vec<u32>,
    /// The node's CPUs (indices) it holds here.
    cpus: Vec<u32>,
    /// Started by an earlier daemon or by a launcher that has died since: nobody reports its
    /// end, so it is noticed by polling its step file's lock.
    adopted: bool,
}

/// How this node contains its jobs.
#[derive(Debug, Clone, Default)]
pub struct Containment {
    /// Where job cgroups go; `None`: no cgroups (the replicas are bound to their CPUs only).
    pub cgroup: Option<Hierarchy>,
    /// The host CPUs the daemon may use; the node's CPUs (its configured count) map onto them in
    /// turn.
    pub host_cpus: Vec<u32>,
    /// The node's GPUs.
    pub gpus: u32,
    pub max_pids: u64,
}

impl Containment {
    /// What a run holding the node's `cpus` and `gpus` (indices) may use.
    fn limits(&self, job: &Job, cpus: &[u32], gpus: &[u32]) -> Limits {
        let host = |slot: &u32| match self.host_cpus.len() {
            0 => *slot,
            n => self.host_cpus[*slot as usize % n],
        };
        Limits {
            cpus: cpus.iter().map(host).collect(),
            memory_bytes: Some(job.spec.per_node.memory_mb.saturating_mul(1024 * 1024)),
            max_pids: Some(self.max_pids),
            denied_gpus: (0..self.gpus).filter(|g| !gpus.contains(g)).collect(),
        }
    }
}

/// The lowest `count` indices below `total` not in `held`; when too few are free, held ones
/// complete the list (`None` if `total` is too small).
fn lowest_free(held: &HashSet<u32>, total: u32, count: u32) -> Option<Vec<u32>> {
    if count > total {
        return None;
    }
    let free = (0..total).filter(|i| !held.contains(i));
    let taken = (0..total).filter(|i| held.contains(i));
    Some(free.chain(taken).take(count as usize).collect())
}

/// The supervisors of this node's job runs.
pub struct Steps {
    root: PathBuf,
    exe: PathBuf,
    /// The supervisors' shared log (their stderr), opened for appending.
    log: File,
    /// Started on the first job, and again after it dies.
    launcher: Option<Launcher>,
    node: NodeId,
    kill_grace: Duration,
    containment: Containment,
    steps: BTreeMap<JobId, Step>,
    ended: VecDeque<JobRun>,
    ended_set: HashSet<JobRun>,
    /// The daemon's socket for MPI fences, given to each supervisor.
    pmi_relay: Option<PathBuf>,
}

impl Steps {
    pub fn new(
        state_dir: &Path,
        node: NodeId,
        kill_grace: Duration,
        containment: Containment,
    ) -> std::io::Result<Steps> {
        let root = state_dir.join("jobs");
        crate::private::create_dir(state_dir)?;
        crate::private::create_dir(&root)?;
        let log = crate::private::append(&state_dir.join("cmstep.log"))?;
        // The supervisor binary is installed beside cmd.
        let exe = std::env::current_exe()?.with_file_name("cmstep");
        Ok(Steps {
            root,
            exe,
            log,
            launcher: None,
            node,
            kill_grace,
            containment,
            steps: BTreeMap::new(),
            ended: VecDeque::new(),
            ended_set: HashSet::new(),
            pmi_relay: None,
        })
    }

    /// Where supervisors relay MPI fences from now on.
    pub fn set_pmi_relay(&mut self, path: PathBuf) {
        self.pmi_relay = Some(path);
    }

    fn path(&self, run: JobRun) -> PathBuf {
        record::path(&self.root, run)
    }

    /// Whether this run runs here now or ended here lately.
    pub fn knows(&self, run: JobRun) -> bool {
        self.steps.get(&run.job).is_some_and(|s| s.run == run.run) || self.ended_set.contains(&run)
    }

    /// The supervisor of `id`'s run here, if it runs and its supervisor is known.
    pub fn supervisor(&self, id: JobId) -> Option<i32> {
        self.steps.get(&id).and_then(|s| s.pid)
    }

    /// The run of `id` running here, if any.
    pub fn run_of(&self, id: JobId) -> Option<u32> {
        self.steps.get(&id).map(|s| s.run)
    }

    pub fn runs(&self) -> Vec<JobRun> {
        self.steps.iter().map(|(&job, s)| JobRun { job, run: s.run }).collect()
    }

    /// What the running jobs hold here.
    pub fn allocated(&self) -> Resources {
        self.steps.values().fold(Resources::default(), |sum, s| sum.saturating_add(&s.per_node))
    }

    /// The lowest `count` of the node's `gpus` that no running job holds; `None` if too few are
    /// free (a run adopted while its step file could not be read holds what it held unknown).
    pub fn free_gpus(&self, gpus: u32, count: u32) -> Option<Vec<u32>> {
        let held: HashSet<u32> = self.steps.values().flat_map(|s| s.gpus.iter().copied()).collect();
        let free: Vec<u32> = (0..gpus).filter(|g| !held.contains(g)).take(count as usize).collect();
        (free.len() == count as usize).then_some(free)
    }

    /// The lowest `count` of the node's `cpus` that no running job holds. Two runs share a CPU
    /// only when the node has too few free (a run adopted unread holds what it holds unknown).
    pub fn free_cpus(&self, cpus: u32, count: u32) -> Vec<u32> {
        let held: HashSet<u32> = self.steps.values().flat_map(|s| s.cpus.iter().copied()).collect();
        lowest_free(&held, cpus.max(count), count).unwrap_or_default()
    }

    /// Has a supervisor run this node's share of `job`; `on_end` is called when the supervisor is
    /// done with it.
    pub fn start(
        &mut self,
        job: &Job,
        run_as: Option<RunAs>,
        gpus: Option<Vec<u32>>,
        cpus: Vec<u32>,
        on_end: impl FnOnce(JobRun) + Send + 'static,
    ) -> Result<(), String> {
        let run = job.job_run();
        let path = self.path(run);
        let node = self.node.clone();
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("cannot {what} for job {run} on {node}: {e}");
        let kill_grace_ms = u64::try_from(self.kill_grace.as_millis()).unwrap_or(u64::MAX);
        let held = gpus.clone().unwrap_or_default();
        let limits = self.containment.limits(job, &cpus, &held);
        let spec = StepSpec {
            job: job.clone(),
            node: self.node.clone(),
            run_as,
            gpus,
            kill_grace_ms,
            cpus: cpus.clone(),
            cgroup: self.containment.cgroup.clone(),
            limits: Some(limits),
            pmi_relay: self.pmi_relay.clone(),
        };
        record::create(&path, &spec).map_err(|e| fail("write the step file", &e))?;
        let pid = match self.launcher().and_then(|l| l.launch(&path, Box::new(move || on_end(run)))) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(fail("start the job supervisor", &e));
            }
        };
        self.steps.insert(
            job.id,
            Step { run: run.run, pid: Some(pid), per_node: job.spec.per_node, gpus: held, cpus, adopted: false },
        );
        Ok(())
    }

    /// The launcher, started anew if there is none or it has died (its supervisors are then
    /// watched by polling, as adopted ones are).
    fn launcher(&mut self) -> Result<&mut Launcher, String> {
        self.forget_lost_launcher();
        if self.launcher.is_none() {
            let log = self.log.try_clone().map_err(|e| format!("cannot share the supervisor log: {e}"))?;
            let launcher = Launcher::spawn(&self.exe, log)
                .map_err(|e| format!("cannot start the supervisor launcher {}: {e}", self.exe.display()))?;
            self.launcher = Some(launcher);
        }
        self.launcher.as_mut().ok_or_else(|| "no supervisor launcher".to_string())
    }

    /// If the launcher has died, forgets it; its supervisors' ends are noticed by polling from
    /// now on, as adopted ones' are.
    fn forget_lost_launcher(&mut self) {
        if self.launcher.as_ref().is_some_and(Launcher::is_lost) {
            self.launcher = None;
            for step in self.steps.values_mut() {
                step.adopted = true;
            }
        }
    }

    /// Asks the supervisor of `id` to stop the job (SIGTERM, then SIGKILL after the grace period).
    pub fn stop(&self, id: JobId) {
        let Some(step) = self.steps.get(&id) else { return };
        tracing::info!(job = %id, "stopping job");
        let run = JobRun { job: id, run: step.run };
        // A supervisor not known yet is asked for by its lock now.
        let pid = step.pid.or_else(|| record::supervisor_of(&self.path(run)).ok().flatten());
        match pid {
            Some(pid) => {
                let _ = cm_step::supervisor::ask_to_stop(pid, id);
            }
            None => {
                tracing::warn!(job = %run, "cannot tell which process supervises the job; it is asked again at the next poll")
            }
        }
    }

    /// The end of a run whose supervisor is done with it: what it recorded, or Lost if it recorded
    /// nothing (it was killed). `None` if the run is not (or no longer) ours.
    pub fn end_of(&mut self, run: JobRun) -> Option<NodeEnd> {
        if self.steps.get(&run.job).is_none_or(|s| s.run != run.run) {
            return None;
        }
        self.steps.remove(&run.job);
        self.remember_end(run);
        Some(self.recorded_end(run))
    }

    fn recorded_end(&self, run: JobRun) -> NodeEnd {
        let lost = |reason: String| NodeEnd {
            ended_at: Timestamp::now(),
            cause: NodeEndCause::Lost { reason },
            replicas: vec![],
            usage: None,
        };
        let end = match record::read_end(&self.path(run)) {
            Ok(Some(end)) => return end,
            Ok(None) => lost(format!("the job's supervisor on {} died without an exit record", self.node)),
            Err(e) => lost(e.to_string()),
        };
        // Its supervisor is gone: what the job left running in its cgroup dies now, not never.
        if let Some(hierarchy) = &self.containment.cgroup {
            JobCgroup::kill_and_remove(hierarchy, &cgroup_name(run));
        }
        end
    }

    /// The head has the end of `run`: its step file can go.
    pub fn acknowledged(&self, run: JobRun) {
        let path = self.path(run);
        match std::fs::remove_file(&path) {
            // A run that never started here (stopped while it waited) has no step file.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a finished job's step file");
            }
            _ => {}
        }
    }

    /// After a daemon (re)start: adopts the supervisors still running and returns the ends of
    /// runs that finished (or whose supervisor vanished) while no daemon was watching. A run
    /// whose step file cannot be read or asked (an I/O error, not its absence) may still run: it
    /// is adopted with its supervisor unknown, reported to the head as running, and asked again at
    /// each poll ([`Steps::ended_adopted`]), rather than reported lost.
    pub fn adopt(&mut self) -> Vec<(JobRun, NodeEnd)> {
        let mut ends = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return ends };
        for entry in entries.flatten() {
            let Some(run) = entry.file_name().to_str().and_then(record::run_of) else { continue };
            let path = self.path(run);
            match (record::read(&path), record::supervisor_of(&path)) {
                (Ok(Some(record::StepRecord { spec: Some(spec), .. })), Ok(Some(pid))) => {
                    tracing::info!(job = %run, pid, "adopted a running job");
                    let step = Step {
                        run: run.run,
                        pid: Some(pid),
                        per_node: spec.job.spec.per_node,
                        gpus: spec.gpus.unwrap_or_default(),
                        cpus: spec.cpus,
                        adopted: true,
                    };
                    self.steps.insert(run.job, step);
                }
                (Err(e), _) => self.adopt_unsure(run, &e.to_string()),
                (_, Err(e)) => self.adopt_unsure(run, &e.to_string()),
                _ => {
                    self.remember_end(run);
                    ends.push((run, self.recorded_end(run)));
                }
            }
        }
        ends
    }

    fn adopt_unsure(&mut self, run: JobRun, error: &str) {
        tracing::warn!(job = %run, %error, "cannot tell whether a job still runs here; asking again at each poll");
        let step =
            Step { run: run.run, pid: None, per_node: Resources::default(), gpus: vec![], cpus: vec![], adopted: true };
        self.steps.insert(run.job, step);
    }

    /// Adopted runs whose supervisor is done since: their step files are no longer locked.
    /// (Nobody else tells us: their supervisors do not belong to our launcher.) A file that cannot be
    /// asked (too many open files, say) tells nothing: its run is asked again at the next poll,
    /// rather than reported lost while it may still run.
    pub fn ended_adopted(&mut self) -> Vec<JobRun> {
        self.forget_lost_launcher();
        let mut exited = Vec::new();
        for (&job, step) in self.steps.iter_mut().filter(|(_, s)| s.adopted) {
            let run = JobRun { job, run: step.run };
            let path = record::path(&self.root, run);
            match record::supervisor_of(&path) {
                Ok(None) => exited.push(run),
                Ok(Some(pid)) if step.pid.is_none() => {
                    // Adopted unsure: now its supervisor and what it holds are known.
                    match record::read(&path) {
                        Ok(Some(record::StepRecord { spec: Some(spec), .. })) => {
                            tracing::info!(job = %run, pid, "adopted a running job");
                            step.pid = Some(pid);
                            step.per_node = spec.job.spec.per_node;
                            step.gpus = spec.gpus.unwrap_or_default();
                            step.cpus = spec.cpus;
                        }
                        _ => tracing::warn!(job = %run, "cannot read a running job's step file"),
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(job = %run, error = %e, "cannot tell whether a job's supervisor still runs"),
            }
        }
        exited
    }

    /// Records that `run` is over here, so a late or repeated StartJob for it is ignored.
    pub fn remember_end(&mut self, run: JobRun) {
        if self.ended.len() >= REMEMBERED_ENDS {
            if let Some(old) = self.ended.pop_front() {
                self.ended_set.remove(&old);
            }
        }
        if self.ended_set.insert(run) {
            self.ended.push_back(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_get_the_lowest_free_cpus_and_share_only_when_none_are_free() {
        let held: HashSet<u32> = [0, 1, 3].into();
        assert_eq!(lowest_free(&held, 6, 2), Some(vec![2, 4]));
        assert_eq!(lowest_free(&held, 4, 2), Some(vec![2, 0]), "one free, one shared");
        assert_eq!(lowest_free(&held, 2, 3), None);
    }

    #[test]
    fn a_runs_limits_map_the_nodes_cpus_onto_the_hosts_and_deny_other_gpus() {
        let containment = Containment { cgroup: None, host_cpus: vec![4, 5], gpus: 3, max_pids: 100 };
        let mut job = Job::new(JobId(1), cm_common::job::JobSpec::example(), Timestamp(1), "t".into());
        job.spec.per_node = Resources::new(3, 64);
        let limits = containment.limits(&job, &[0, 1, 2], &[1]);
        assert_eq!(limits.cpus, vec![4, 5, 4], "a node declared larger than its host shares the host's CPUs");
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(limits.max_pids, Some(100));
        assert_eq!(limits.denied_gpus, vec![0, 2]);
    }

    #[test]
    fn a_run_whose_step_file_cannot_be_read_at_start_is_kept_and_asked_again() {
        use cm_common::job::{ExitStatus, JobSpec, ReplicaExit};
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut steps =
            Steps::new(dir.path(), NodeId::new("c1"), Duration::from_secs(1), Containment::default()).expect("steps");
        let run = JobRun { job: JobId(2), run: 0 };
        let path = steps.path(run);
        // A link to itself: reading or asking it fails with ELOOP, which says nothing of the job.
        std::os::unix::fs::symlink(&path, &path).expect("symlink");
        assert!(steps.adopt().is_empty(), "not reported as ended");
        assert_eq!(steps.runs(), vec![run], "reported to the head as still here");
        assert_eq!(steps.ended_adopted(), vec![], "still cannot tell");
        steps.stop(run.job); // no supervisor known: nothing is signalled (pid 0 would be our group)

        // Readable now, with an end, and held by no one: the run ended while nobody could tell.
        std::fs::remove_file(&path).expect("remove");
        let job = Job::new(run.job, JobSpec::example(), Timestamp(1), "t".into());
        let spec = StepSpec::new(job, NodeId::new("c1"), 1000);
        record::create(&path, &spec).expect("create");
        let end = NodeEnd {
            ended_at: Timestamp(5),
            cause: NodeEndCause::Exited,
            replicas: vec![ReplicaExit { rank: 0, status: ExitStatus::Exited { code: 0 } }],
            usage: None,
        };
        let bytes = rmp_serde::to_vec_named(&end).expect("encode");
        std::fs::OpenOptions::new().append(true).open(&path).expect("open").write_all(&bytes).expect("append");
        assert_eq!(steps.ended_adopted(), vec![run]);
        assert_eq!(steps.end_of(run), Some(end));
        assert!(steps.runs().is_empty());
    }

    #[test]
    fn an_adopted_run_whose_step_file_cannot_be_asked_is_not_taken_for_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut steps =
            Steps::new(dir.path(), NodeId::new("c1"), Duration::from_secs(1), Containment::default()).expect("steps");
        let run = JobRun { job: JobId(1), run: 0 };
        steps.steps.insert(
            run.job,
            Step {
                run: run.run,
                pid: Some(1),
                per_node: Resources::default(),
                gpus: vec![],
                cpus: vec![],
                adopted: true,
            },
        );
        // A link to itself: opening it fails with ELOOP, an error other than "not found".
        let path = steps.path(run);
        std::os::unix::fs::symlink(&path, &path).expect("symlink");
        assert!(record::supervisor_of(&path).is_err());
        assert_eq!(steps.ended_adopted(), vec![], "an I/O error says nothing about the supervisor");
        // Readable and unlocked: its supervisor is gone.
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, b"").expect("write");
        assert_eq!(steps.ended_adopted(), vec![run]);
    }
}
