//! The head's side of a scheduling pass: what the pure [`scheduler`] is given (the nodes that
//! take jobs with when their running jobs' time limits run out, the partitions, the pending jobs
//! with their priorities and time limits) and what becomes of its placements.

use super::*;
use crate::scheduler::{Candidate, PartitionView, Policy};
use std::collections::HashMap;

/// Whether pending `job`'s dependencies let it start.
fn may_start(job: &Job) -> bool {
    job.dependency.is_empty() && job.dependency_never.is_none()
}

/// The throttle of pending `job`'s array, if as many of its tasks as that run now (`running`,
/// from `running_tasks`).
pub(super) fn throttled(job: &Job, running: &HashMap<JobId, u32>) -> Option<u32> {
    let limit = job.spec.array.as_ref()?.throttle?;
    (task_starts(job, running) == 0).then_some(limit)
}

/// How many of pending `job`'s tasks may start now: its throttle less its array's running tasks.
fn task_starts(job: &Job, running: &HashMap<JobId, u32>) -> u32 {
    let waiting = u32::try_from(job.weight()).unwrap_or(u32::MAX);
    match (job.array.as_ref(), job.spec.array.as_ref().and_then(|a| a.throttle)) {
        (Some(task), Some(limit)) => waiting.min(limit.saturating_sub(running.get(&task.array).copied().unwrap_or(0))),
        _ => waiting,
    }
}

impl HeadCore {
    /// The partition `job` runs in, as an index into `partitions`; `None` if it names one the
    /// head no longer has.
    pub(super) fn partition_of(&self, job: &JobSpec) -> Option<usize> {
        if job.partition.is_empty() {
            return self.default_partition;
        }
        self.partitions.iter().position(|rules| rules.partition.name == job.partition)
    }

    /// How long `job` may run in partition `p`: its time limit, else the partition's default.
    pub(super) fn duration(&self, job: &JobSpec, p: usize) -> Option<Duration> {
        job.time_limit().or_else(|| self.partitions[p].default_time())
    }

    /// The compute nodes that take jobs, as the scheduler sees them at `now`.
    pub(super) fn node_views(&self, now: Timestamp) -> Vec<NodeView> {
        self.nodes
            .values()
            .filter(|n| n.role == Role::Compute && n.takes_jobs())
            .map(|n| NodeView {
                id: n.id.clone(),
                capacity: n.capacity,
                free: n.free(),
                only_uid: n.only_uid,
                max_procs: self.max_procs(n),
                releases: n
                    .allocations
                    .iter()
                    .filter_map(|a| Some((self.expected_release(a.job, now)?, a.resources)))
                    .collect(),
            })
            .collect()
    }

    /// When job `id` is expected to give its nodes back: at the end of its time limit, or soon
    /// if it is over (being killed, or ending); `None` if it has no limit.
    fn expected_release(&self, id: JobId, now: Timestamp) -> Option<Timestamp> {
        let job = self.jobs.get(&id)?;
        match job.state {
            JobState::Running { started_at } => {
                let limit = self.duration(&job.spec, self.partition_of(&job.spec)?)?;
                Some(Timestamp(started_at.0.saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))))
            }
            _ => Some(now), // ended, waiting for its nodes to confirm
        }
    }

    /// Each partition's nodes among `views`.
    pub(super) fn partition_views(&self, views: &[NodeView]) -> Vec<PartitionView> {
        self.partitions
            .iter()
            .map(|rules| PartitionView {
                nodes: (0..views.len()).filter(|&i| rules.has_node(&views[i].id)).collect(),
                max_running_per_user: rules.partition.max_running_per_user,
            })
            .collect()
    }

    /// Running jobs by (partition, uid), for `max_running_per_user`: none counted where no
    /// partition has it, so that a pass does not go over every running job for nothing.
    pub(super) fn running_counts(&self) -> HashMap<(usize, u32), u32> {
        let mut counts = HashMap::new();
        if self.partitions.iter().all(|rules| rules.partition.max_running_per_user.is_none()) {
            return counts;
        }
        for job in self.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. })) {
            if let Some(p) = self.partition_of(&job.spec) {
                *counts.entry((p, job.spec.user.uid)).or_default() += 1;
            }
        }
        counts
    }

    /// Why pending `job` may not run in its partition `p` as configured now (the configuration
    /// changed since it was submitted), if it may not.
    pub(super) fn partition_refusal(&self, job: &Job, p: usize) -> Option<String> {
        self.partitions[p].refuses(job.spec.nodes, self.duration(&job.spec, p))
    }

    /// The priority at `now` of `job`, in partition `p` (if it still has one).
    pub(super) fn priority(&self, job: &Job, p: Option<usize>, now: Timestamp) -> u64 {
        let base = p.map_or(0, |p| self.partitions[p].partition.priority);
        scheduler::priority(job, base, self.settings.scheduling.max_age, now)
    }

    /// Whether no node that takes jobs has a CPU free: then nothing can start.
    fn no_cpu_free(&self) -> bool {
        self.nodes.values().filter(|n| n.role == Role::Compute && n.takes_jobs()).all(|n| n.free().cpus == 0)
    }

    /// Places what may start, persists the placements in one write, and queues the starts.
    pub fn schedule(&mut self, now: Timestamp) {
        if !self.jobs.values().any(|j| j.state == JobState::Pending) {
            self.blocked.clear();
            return;
        }
        // Dependencies are settled first: a job whose last one was just met may start now.
        let periodic = std::mem::take(&mut self.periodic_pass);
        self.resolve_dependencies(now);
        // With no CPU free nothing can start: a pass after each submission to a full cluster
        // would only order the whole queue again, for the pending reasons. The periodic pass
        // does that.
        if !periodic && self.no_cpu_free() {
            return;
        }
        let views = self.node_views(now);
        let partitions = self.partition_views(&views);
        let running_tasks = self.running_tasks();
        let candidates: Vec<Candidate> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending && !scheduler::is_held(j) && may_start(j))
            .filter_map(|job| {
                let partition = self.partition_of(&job.spec)?;
                let duration = self.duration(&job.spec, partition);
                if self.partitions[partition].refuses(job.spec.nodes, duration).is_some() {
                    return None;
                }
                let priority = self.priority(job, Some(partition), now);
                let starts = task_starts(job, &running_tasks);
                Some(Candidate { job, priority, partition, duration, starts })
            })
            .collect();
        let policy = Policy { backfill: self.settings.scheduling.backfill, now };
        let pass = scheduler::schedule(&candidates, &views, &partitions, &self.running_counts(), policy);
        self.blocked = pass.blocked;
        if pass.placements.is_empty() {
            return;
        }
        let mut jobs = Vec::with_capacity(pass.placements.len());
        let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
        // Arrays' records that tasks were split off, as they are after.
        let mut records: BTreeMap<JobId, Job> = BTreeMap::new();
        for placement in pass.placements {
            let Some(mut record) = records.remove(&placement.job).or_else(|| self.jobs.get(&placement.job).cloned())
            else {
                continue;
            };
            jobs.push(self.place(&mut record, placement.nodes, now, &mut nodes));
            records.insert(record.id, record);
        }
        // A record whose every task started is itself the last task, among `jobs` already.
        jobs.extend(records.into_values().filter(|r| r.state == JobState::Pending));
        let starts: Vec<Job> = jobs.iter().filter(|j| j.state != JobState::Pending).cloned().collect();
        if let Err(e) = self.commit(jobs, nodes.into_values().collect()) {
            // Nothing was placed; the next pass tries again.
            tracing::error!(error = %e, "cannot persist placements");
            return;
        }
        for job in starts {
            tracing::info!(job = %job.id, nodes = ?job.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), "job placed");
            for id in job.node_ids() {
                self.send(id, NodeRequest::StartJob(StartJob { job: job.clone() }));
            }
        }
    }

    /// Starts `record` on `placed`, or the first task waiting in it, split off as a job with an
    /// id of its own, where others wait with it; reserves its share of `nodes`.
    fn place(
        &mut self,
        record: &mut Job,
        placed: Vec<NodeId>,
        now: Timestamp,
        nodes: &mut BTreeMap<NodeId, Node>,
    ) -> Job {
        let mut job = match record.array.as_ref() {
            Some(array) if !array.waiting.is_empty() => {
                let id = JobId(self.last_job_id.0 + 1);
                self.last_job_id = id;
                let task = array.task;
                record.take_task(task, id)
            }
            _ => {
                let job = record.clone();
                record.state = JobState::Running { started_at: now }; // nothing waits in it now
                job
            }
        };
        job.state = JobState::Running { started_at: now };
        job.nodes = placed.iter().map(|n| JobNode { node: n.clone(), started_at: None, end: None }).collect();
        for id in &placed {
            let node = match nodes.get_mut(id) {
                Some(node) => node,
                None => match self.nodes.get(id) {
                    Some(node) => nodes.entry(id.clone()).or_insert_with(|| node.clone()),
                    None => continue,
                },
            };
            node.allocations.push(Allocation { job: job.id, resources: job.spec.per_node });
        }
        job
    }

    /// Running tasks, by array, for arrays' throttles: none counted where no pending array has one.
    pub(super) fn running_tasks(&self) -> HashMap<JobId, u32> {
        let mut counts = HashMap::new();
        let has_throttle = |j: &Job| j.spec.array.as_ref().is_some_and(|a| a.throttle.is_some());
        if !self.jobs.values().any(|j| j.state == JobState::Pending && has_throttle(j)) {
            return counts;
        }
        for job in self.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. }) && has_throttle(j)) {
            if let Some(task) = &job.array {
                *counts.entry(task.array).or_default() += 1;
            }
        }
        counts
    }

    /// The partitions with the nodes now in each, for the tools.
    pub(super) fn partition_infos(&self) -> Vec<cm_common::partition::PartitionInfo> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(p, rules)| cm_common::partition::PartitionInfo {
                partition: rules.partition.clone(),
                is_default: self.default_partition == Some(p),
                nodes: self
                    .nodes
                    .values()
                    .filter(|n| n.role == Role::Compute && rules.has_node(&n.id))
                    .map(|n| n.id.clone())
                    .collect(),
            })
            .collect()
    }
}
