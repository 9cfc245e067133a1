//! Why a pending job waits, worked out when a listing asks (nothing is stored): a word for tables
//! and a sentence that says what is missing where.

use super::*;
use cm_common::job::PendingReason;

impl HeadCore {
    /// Gives every pending job in `jobs` its reason.
    pub(super) fn explain_pending(&self, jobs: &mut [Job]) {
        if !jobs.iter().any(|j| j.state == JobState::Pending) {
            return;
        }
        let views = self.node_views();
        for job in jobs.iter_mut().filter(|j| j.state == JobState::Pending) {
            job.pending_reason = Some(self.pending_reason(job, &views));
        }
    }

    fn pending_reason(&self, job: &Job, views: &[NodeView]) -> PendingReason {
        let reason = |word: &str, sentence: String| PendingReason { word: word.to_string(), sentence };
        if !scheduler::could_ever_run(job, views) {
            return reason("NodesDown", self.unavailable_nodes(job));
        }
        match self.blocked {
            Some(first) if first == job.id => {
                let lacking = scheduler::shortfall(job, views)
                    .unwrap_or_else(|| "it fits now, and starts at the next scheduling pass".to_string());
                reason("Resources", format!("first in line, waiting for resources: {lacking}"))
            }
            Some(first) if first < job.id => reason(
                "Priority",
                format!("waits behind job {first}, first in line (jobs start in the order they were submitted)"),
            ),
            _ => reason("Scheduling", "waits for the next scheduling pass".to_string()),
        }
    }

    /// Which of the nodes large enough for `job` are down or drained, in a sentence.
    fn unavailable_nodes(&self, job: &Job) -> String {
        let large_enough = |n: &&Node| {
            n.role == Role::Compute && n.capacity.contains(&job.spec.per_node) && n.can_run_as(job.spec.user.uid)
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
        if parts.is_empty() {
            return "no node that takes jobs is large enough for it".to_string();
        }
        format!("the nodes large enough for it do not take jobs now; {}", parts.join("; "))
    }
}
