//! Why a pending job waits, worked out when a listing asks (nothing is stored): a word for tables
//! and a sentence that says what is missing where, and for the first job in line of a partition
//! when it is expected to start and on which nodes.

use super::*;
use crate::scheduler::PartitionView;
use cm_common::job::PendingReason;

/// What is running, counted once for all the jobs of a listing: by (partition, uid), and each
/// array's tasks.
struct Seen {
    running: std::collections::HashMap<(usize, u32), u32>,
    tasks: std::collections::HashMap<JobId, u32>,
}

impl HeadCore {
    /// Gives every pending job in `jobs` its priority and its reason.
    pub(super) fn explain_pending(&self, jobs: &mut [Job], now: Timestamp) {
        if !jobs.iter().any(|j| j.state == JobState::Pending) {
            return;
        }
        let views = self.node_views(now);
        let partitions = self.partition_views(&views);
        let seen = Seen { running: self.running_counts(), tasks: self.running_tasks() };
        for job in jobs.iter_mut().filter(|j| j.state == JobState::Pending) {
            let p = self.partition_of(&job.spec);
            let priority = self.priority(job, p, now);
            job.priority = Some(priority);
            job.pending_reason = Some(self.pending_reason(job, p, priority, &views, &partitions, &seen));
        }
    }

    fn pending_reason(
        &self,
        job: &Job,
        p: Option<usize>,
        priority: u64,
        views: &[NodeView],
        partitions: &[PartitionView],
        seen: &Seen,
    ) -> PendingReason {
        let running = &seen.running;
        let reason = |word: &str, sentence: String| PendingReason {
            word: word.to_string(),
            sentence,
            expected_start: None,
            reserved_nodes: vec![],
        };
        if job.spec.priority == Some(0) {
            return reason(
                "JobHeldAdmin",
                format!("an operator holds it (priority 0); an operator's cmctl release {} releases it", job.id),
            );
        }
        if job.spec.hold {
            return reason("JobHeldUser", format!("held; cmctl release {} releases it", job.display_id()));
        }
        if let Some(never) = &job.dependency_never {
            return reason("DependencyNeverSatisfied", never.clone());
        }
        if !job.dependency.is_empty() {
            return reason("Dependency", format!("it waits for {}", cm_common::dependency::show(&job.dependency)));
        }
        if let Some(limit) = super::scheduling::throttled(job, &seen.tasks) {
            return reason(
                "JobArrayTaskLimit",
                format!(
                    "{limit} task(s) of array {} run, its limit (--array ...%{limit})",
                    job.array.as_ref().map_or(job.id, |a| a.array)
                ),
            );
        }
        let Some(p) = p else {
            return reason("PartitionLimit", format!("its partition {} is no longer configured", job.spec.partition));
        };
        if let Some(refusal) = self.partition_refusal(job, p) {
            return reason("PartitionLimit", refusal);
        }
        let partition = &self.partitions[p].partition;
        if !scheduler::could_ever_run(job, views, &partitions[p].nodes) {
            return reason("NodesDown", self.unavailable_nodes(job, p));
        }
        let uid = job.spec.user.uid;
        let mine = running.get(&(p, uid)).copied().unwrap_or(0);
        if let Some(max) = partition.max_running_per_user.filter(|&max| mine >= max) {
            return reason(
                "QueueLimit",
                format!(
                    "{} has {mine} job(s) running in partition {}, its limit per user (max_running_per_user: {max})",
                    job.spec.user.name, partition.name
                ),
            );
        }
        // The first job in line as the last pass saw it, if it still waits.
        let first = self
            .blocked
            .get(p)
            .and_then(Option::as_ref)
            .filter(|b| b.job == job.id || self.jobs.get(&b.job).is_some_and(|j| j.state == JobState::Pending));
        match first {
            Some(first) if first.job == job.id => {
                let lacking = scheduler::shortfall(job, views, &partitions[p].nodes)
                    .unwrap_or_else(|| "it fits now, and starts at the next scheduling pass".to_string());
                let mut why = reason("Resources", format!("first in line in partition {}: {lacking}", partition.name));
                match &first.reservation {
                    Some(r) => {
                        let nodes: Vec<&str> = r.nodes.iter().map(NodeId::as_str).collect();
                        why.sentence.push_str(&format!(
                            "; expected to start by {} on {}, held for it (from the running jobs' time limits)",
                            r.start,
                            nodes.join(", ")
                        ));
                        why.expected_start = Some(r.start);
                        why.reserved_nodes = r.nodes.clone();
                    }
                    None => why.sentence.push_str(
                        "; no start time can be worked out (jobs on the nodes it needs have no time limit), so those nodes take no job behind it",
                    ),
                }
                why
            }
            Some(first) if (first.priority, std::cmp::Reverse(first.job)) > (priority, std::cmp::Reverse(job.id)) => {
                reason(
                    "Priority",
                    format!(
                        "job {} (priority {}) is first in line in partition {}; this job (priority {priority}) may start before it only where it cannot delay it",
                        first.job, first.priority, partition.name
                    ),
                )
            }
            _ => reason("Scheduling", "waits for the next scheduling pass".to_string()),
        }
    }

    /// Which of partition `p`'s nodes large enough for `job` are down or drained, in a sentence.
    fn unavailable_nodes(&self, job: &Job, p: usize) -> String {
        let large_enough = |n: &&Node| {
            n.role == Role::Compute
                && self.partitions[p].has_node(&n.id)
                && n.capacity.contains(&job.spec.per_node)
                && n.can_run_as(job.spec.user.uid)
        };
        let mut down = Vec::new();
        let mut drained = Vec::new();
        for node in self.nodes.values().filter(large_enough) {
            match (&node.health, &node.drain) {
                (NodeHealth::Down { .. }, _) => down.push(node.id.to_string()),
                (NodeHealth::Up, Some(drain)) => drained.push(format!("{} ({})", node.id, drain.reason)),
                (NodeHealth::Up, None) => {}
            }
        }
        let mut parts = Vec::new();
        if !down.is_empty() {
            parts.push(format!("down: {}", down.join(", ")));
        }
        if !drained.is_empty() {
            parts.push(format!("drained: {}", drained.join(", ")));
        }
        let partition = &self.partitions[p].partition.name;
        if parts.is_empty() {
            return format!("no node of partition {partition} that takes jobs is large enough for it");
        }
        format!("the nodes of partition {partition} large enough for it do not take jobs now; {}", parts.join("; "))
    }
}
