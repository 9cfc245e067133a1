//! Faults injected on purpose (`cmctl fault`), for teaching and testing: root and the
//! `operators` only. The head checks the order, logs who gave it, and passes it to the node that
//! acts it out; then the cluster detects and recovers as from the real thing.

use super::*;
use cm_common::protocol::{Fault, FaultInjected, InjectFault, MAX_FAULT_SECONDS};

impl HeadCore {
    pub(super) fn inject_fault(&mut self, uid: u32, req: InjectFault) -> Reply<ClientResponse> {
        if !self.is_operator(uid) {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                "only root and the operators (operators: in the head's config.yaml) may inject faults",
            ));
        }
        let node = match &req.fault {
            Fault::Crash { node } => node.clone(),
            Fault::Freeze { node, seconds } | Fault::Isolate { node, seconds } => {
                if *seconds == 0 || *seconds > MAX_FAULT_SECONDS {
                    return Err(invalid(format!("give 1 to {MAX_FAULT_SECONDS} seconds")));
                }
                node.clone()
            }
            Fault::KillRank { job, rank } => self.node_of_rank(*job, *rank)?,
        };
        match self.nodes.get(&node) {
            Some(n) if n.role == Role::Compute && n.is_up() => {}
            Some(n) if n.role == Role::Compute => {
                return Err(invalid(format!("node {node} is {}: it cannot act a fault out", n.status())))
            }
            _ => return Err(ErrorReply::new(ErrorCode::NotFound, format!("there is no compute node {node}"))),
        }
        let by = self.user_names.name(uid, "");
        tracing::warn!(%node, by = %by, uid, fault = ?req.fault, "fault injected on purpose");
        self.send(&node, NodeRequest::InjectFault(req.fault));
        Ok(ClientResponse::FaultInjected(FaultInjected { node }))
    }

    /// The node that runs rank `rank` of running job `id`.
    fn node_of_rank(&self, id: JobId, rank: u64) -> Result<NodeId, ErrorReply> {
        let Some(job) = self.jobs.get(&id).filter(|j| matches!(j.state, JobState::Running { .. })) else {
            return Err(invalid(format!("job {id} is not running")));
        };
        let total = job.spec.total_procs();
        if rank >= total {
            return Err(invalid(format!("job {id} has ranks 0 to {}", total - 1)));
        }
        let node_rank = (rank / u64::from(job.spec.procs_per_node.max(1))) as usize;
        job.nodes.get(node_rank).map(|n| n.node.clone()).ok_or_else(|| invalid(format!("job {id} has no rank {rank}")))
    }
}
