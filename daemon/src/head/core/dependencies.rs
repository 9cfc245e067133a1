//! Dependencies between jobs (`cmrun --dependency`): checked at submission (every job named must
//! exist), then settled before each scheduling pass. A dependency met is dropped from the job;
//! one that can never be met leaves the job waiting with the reason `DependencyNeverSatisfied`,
//! or ends it in that state with `scheduling.kill_invalid_depend`. An array's id stands for all
//! its tasks. The jobs depended on are read from memory (the active jobs and those finished
//! lately), and from the store only for what has left memory.

use super::*;
use cm_common::dependency::{Dependency, DependencyKind};
use std::collections::{HashMap, HashSet};

/// What is known of a job depended on (for an array: of all its tasks together).
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Some task has not started.
    pending: bool,
    /// Some task has not ended.
    unfinished: bool,
    /// Some task ended in a state other than Completed.
    not_ok: bool,
    /// Tasks that ended, and how many the array has (1 for a job).
    ended: u64,
    count: u64,
}

impl Progress {
    /// Counts `job` toward job or array `key`.
    fn add(&mut self, key: JobId, job: &Job) {
        let weight = job.weight();
        self.count = match &job.array {
            Some(task) if task.array == key => job.spec.array.as_ref().map_or(1, |a| a.tasks.count()),
            _ => weight,
        };
        match job.state {
            JobState::Pending => {
                self.pending = true;
                self.unfinished = true;
            }
            JobState::Running { .. } => self.unfinished = true,
            JobState::Completed { .. } => self.ended += weight,
            _ => {
                self.ended += weight;
                self.not_ok = true;
            }
        }
    }

    /// Whether every task is accounted for: some is still to end, or all have.
    fn whole(&self) -> bool {
        self.unfinished || self.ended >= self.count
    }
}

enum Verdict {
    Met,
    Wait,
    Never(String),
}

fn verdict(kind: DependencyKind, id: JobId, progress: Option<&Progress>) -> Verdict {
    let Some(p) = progress else { return Verdict::Never(format!("job {id} does not exist")) };
    match kind {
        DependencyKind::After if !p.pending => Verdict::Met,
        DependencyKind::AfterAny if !p.unfinished => Verdict::Met,
        DependencyKind::AfterOk if p.not_ok => {
            Verdict::Never(format!("job {id} did not complete, and afterok:{id} needs it to"))
        }
        DependencyKind::AfterOk if !p.unfinished => Verdict::Met,
        DependencyKind::AfterNotOk if !p.unfinished && p.not_ok => Verdict::Met,
        DependencyKind::AfterNotOk if !p.unfinished => {
            Verdict::Never(format!("job {id} completed, and afternotok:{id} needs it to fail"))
        }
        _ => Verdict::Wait,
    }
}

impl HeadCore {
    /// Refuses a dependency on a job that does not exist.
    pub(super) fn check_dependencies(&self, dependencies: &[Dependency]) -> Result<(), ErrorReply> {
        for id in dependencies.iter().flat_map(|d| &d.jobs) {
            if !self.jobs.contains_key(id) && self.ended_job(*id).map_err(unavailable)?.is_none() {
                return Err(invalid(format!("--dependency names job {id}, which does not exist")));
            }
        }
        Ok(())
    }

    /// Drops the dependencies of pending jobs that are met now, and marks (or ends) the jobs
    /// whose dependencies can never be met, in one write.
    pub(super) fn resolve_dependencies(&mut self, now: Timestamp) {
        let waiting: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending && !j.dependency.is_empty() && j.dependency_never.is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let targets: HashSet<JobId> =
            waiting.iter().flat_map(|j| j.dependency.iter().flat_map(|d| d.jobs.clone())).collect();
        let progress = match self.progress_of(&targets) {
            Ok(progress) => progress,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the jobs depended on; the next pass tries again");
                return;
            }
        };
        // The first active job of each user and name, for `singleton`.
        let mut first: HashMap<(u32, &str), JobId> = HashMap::new();
        for job in self.jobs.values().filter(|j| !j.state.is_terminal()) {
            let entry = first.entry((job.spec.user.uid, job.spec.name.as_str())).or_insert(job.id);
            *entry = (*entry).min(job.id);
        }
        let kill = self.settings.scheduling.kill_invalid_depend;
        let mut changed = Vec::new();
        for job in waiting {
            let mut left: Vec<Dependency> = Vec::new();
            let mut never = None;
            for dependency in &job.dependency {
                let mut jobs = Vec::new();
                if dependency.kind == DependencyKind::Singleton {
                    if first.get(&(job.spec.user.uid, job.spec.name.as_str())).is_some_and(|&f| f < job.id) {
                        left.push(dependency.clone());
                    }
                    continue;
                }
                for &id in &dependency.jobs {
                    match verdict(dependency.kind, id, progress.get(&id)) {
                        Verdict::Met => {}
                        Verdict::Wait => jobs.push(id),
                        Verdict::Never(why) => {
                            never.get_or_insert(why);
                            jobs.push(id);
                        }
                    }
                }
                if !jobs.is_empty() {
                    left.push(Dependency { kind: dependency.kind, jobs });
                }
            }
            if left == job.dependency && never.is_none() {
                continue;
            }
            let mut job = job.clone();
            job.dependency = left;
            match never {
                Some(reason) if kill => {
                    tracing::info!(job = %job.id, %reason, "job ended: its dependency can never be met");
                    job.state = JobState::DependencyNeverSatisfied { ended_at: now, reason };
                }
                Some(reason) => job.dependency_never = Some(reason),
                None => {}
            }
            changed.push(job);
        }
        if !changed.is_empty() {
            if let Err(e) = self.commit(changed, vec![]) {
                tracing::error!(error = %e, "cannot persist met dependencies; the next pass tries again");
            }
        }
    }

    /// What is known of each of `targets`: from the jobs in memory, then from the store for a
    /// job, or for tasks of an array, that left it. Absent: no such job.
    fn progress_of(&self, targets: &HashSet<JobId>) -> Result<HashMap<JobId, Progress>, StoreError> {
        let mut progress: HashMap<JobId, Progress> = HashMap::new();
        let mut seen: HashSet<JobId> = HashSet::new();
        for job in self.jobs.values().chain(self.finished.iter()) {
            if !seen.insert(job.id) {
                continue; // in both while it settles
            }
            let array = job.array.as_ref().map(|a| a.array).filter(|&a| a != job.id);
            for key in std::iter::once(job.id).chain(array) {
                if targets.contains(&key) {
                    progress.entry(key).or_default().add(key, job);
                }
            }
        }
        for &id in targets {
            let partial = match progress.get(&id) {
                Some(p) if p.whole() => continue,
                Some(_) => true,
                None => {
                    let Some(job) = self.store.job(id)? else { continue };
                    let mut p = Progress::default();
                    p.add(id, &job);
                    let partial = !p.whole(); // the array's record, which became its last task
                    progress.insert(id, p);
                    partial
                }
            };
            if partial {
                // Tasks of the array have left memory: all of them are in the store.
                let filter = JobFilter { arrays: vec![id], ..Default::default() };
                let mut whole = Progress::default();
                for task in self.store.finished_jobs(&filter, usize::MAX)? {
                    whole.add(id, &task);
                }
                progress.insert(id, whole);
            }
        }
        Ok(progress)
    }
}
