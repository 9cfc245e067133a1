//! Orders given with `cmctl`: about nodes (drain, resume, remove: root and the `operators`
//! only) and about pending jobs (priority: operators; nice: the owner too). Each order is logged
//! with who gave it, and a drain keeps its author and reason on the node.

use super::*;
use cm_common::node::Drain;
use cm_common::protocol::{AdministerNode, JobChange, NodeAction, NodeAdministered, UpdateJob};

/// The longest drain reason kept; a longer one is cut.
const MAX_REASON_CHARS: usize = 256;

impl HeadCore {
    pub(super) fn administer(&mut self, uid: u32, req: AdministerNode, now: Timestamp) -> Reply<ClientResponse> {
        if !self.is_operator(uid) {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                "only root and the operators (operators: in the head's config.yaml) may drain, resume or remove nodes",
            ));
        }
        let id = req.node;
        let Some(mut node) = self.nodes.get(&id).cloned() else {
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!("there is no compute node {id}; cminfo lists them"),
            ));
        };
        let by = self.user_names.name(uid, "");
        match req.action {
            NodeAction::Drain { reason } => {
                let reason: String = reason.trim().chars().take(MAX_REASON_CHARS).collect();
                if reason.is_empty() {
                    return Err(invalid("say why the node is drained: cmctl drain NODE --reason TEXT"));
                }
                tracing::info!(node = %id, by = %by, uid, reason = %reason, "node drained");
                node.drain = Some(Drain { reason, by_uid: uid, by, since: now });
                self.commit_now(vec![], vec![node.clone()]).map_err(unavailable)?;
                Ok(ClientResponse::NodeAdministered(NodeAdministered { node: Some(node) }))
            }
            NodeAction::Resume => {
                if node.drain.is_none() {
                    return Err(invalid(format!("node {id} is not drained")));
                }
                tracing::info!(node = %id, by = %by, uid, "node resumed");
                node.drain = None;
                self.commit_now(vec![], vec![node.clone()]).map_err(unavailable)?;
                self.wants_schedule = true;
                Ok(ClientResponse::NodeAdministered(NodeAdministered { node: Some(node) }))
            }
            NodeAction::Remove => {
                if !node.allocations.is_empty() {
                    let jobs: Vec<String> = node.allocations.iter().map(|a| a.job.to_string()).collect();
                    return Err(invalid(format!(
                        "node {id} still holds job(s) {}: drain it, and remove it once they have ended (or cmkill them)",
                        jobs.join(", ")
                    )));
                }
                self.store.remove_node(&id).map_err(unavailable)?;
                self.nodes.remove(&id);
                tracing::info!(node = %id, by = %by, uid, "node removed (its daemon, if it still runs, registers it again)");
                Ok(ClientResponse::NodeAdministered(NodeAdministered { node: None }))
            }
        }
    }

    /// Changes a pending job's priority or nice value.
    pub(super) fn update_job(&mut self, uid: u32, req: UpdateJob, now: Timestamp) -> Reply<ClientResponse> {
        let id = req.id;
        let Some(mut job) = self.jobs.get(&id).cloned() else {
            return Err(match self.store.job(id).map_err(unavailable)? {
                Some(job) => {
                    invalid(format!("job {id} has ended ({}); only a pending job can change", job.state.name()))
                }
                None => not_found(id),
            });
        };
        let operator = self.is_operator(uid);
        if job.spec.user.uid != uid && !operator {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!(
                    "job {id} belongs to {}; only its owner, root or an operator may change it",
                    job.spec.user.name
                ),
            ));
        }
        if job.state != JobState::Pending {
            return Err(invalid(format!("job {id} is {}; only a pending job can change", job.state.name())));
        }
        if req.changes.is_empty() {
            return Err(invalid("say what to change: priority=N, priority=auto, nice=N, hold or release"));
        }
        for change in &req.changes {
            match *change {
                JobChange::Priority(_) | JobChange::AutoPriority if !operator => {
                    return Err(ErrorReply::new(
                        ErrorCode::PermissionDenied,
                        "only root and the operators may set a job's priority; you may lower it with nice=N",
                    ));
                }
                JobChange::Nice(nice) if nice < 0 && !operator => {
                    return Err(ErrorReply::new(
                        ErrorCode::PermissionDenied,
                        "only root and the operators may give a negative nice value (raise a job's priority)",
                    ));
                }
                JobChange::Nice(nice) if nice.abs() > cm_common::partition::MAX_NICE => {
                    return Err(invalid(format!("nice must be between -{0} and {0}", cm_common::partition::MAX_NICE)));
                }
                JobChange::Priority(priority) => job.spec.priority = Some(priority),
                JobChange::AutoPriority => job.spec.priority = None,
                JobChange::Nice(nice) => job.spec.nice = nice,
                JobChange::Hold => job.spec.hold = true,
                // An operator's release lifts an operator's hold (priority 0) too, as scontrol's.
                JobChange::Release => {
                    job.spec.hold = false;
                    if operator && job.spec.priority == Some(0) {
                        job.spec.priority = None;
                    }
                }
            }
        }
        let by = self.user_names.name(uid, "");
        let change = req.changes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
        tracing::info!(job = %id, by = %by, uid, %change, "job updated");
        job.updates.push(cm_common::job::JobUpdate { at: now, by_uid: uid, by, change });
        if job.updates.len() > cm_common::job::MAX_UPDATES {
            job.updates.remove(0);
        }
        self.commit_now(vec![job.clone()], vec![]).map_err(unavailable)?;
        self.wants_schedule = true;
        self.explain_pending(std::slice::from_mut(&mut job), now);
        Ok(ClientResponse::Job(JobReply { job }))
    }
}
