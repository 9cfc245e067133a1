//! Operators' orders about nodes (`cmctl`): drain, resume, remove. Root and the `operators` only;
//! each order is logged with who gave it, and a drain keeps its author and reason on the node.

use super::*;
use cm_common::node::Drain;
use cm_common::protocol::{AdministerNode, NodeAction, NodeAdministered};

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
}
