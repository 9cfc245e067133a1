//! How the head talks to compute nodes, kept apart from what it decides to say.
//!
//! [`NodeComm`] is fire-and-forget: the head's loop never waits on a node. [`ZmqComm`] gives each
//! node a worker thread with its own connection and queue, so a slow or dead node delays only its
//! own messages; a message that cannot be delivered (after the transport's retries) or that the
//! node refuses comes back to the loop as a [`DeliveryFailure`]. Tests use [`RecordingComm`].

use cm_auth::credentials::node_recipient;
use cm_auth::{ClusterKey, Credentials};
use cm_common::node::Node;
use cm_common::protocol::{NodeRequest, NodeResponse};
use cm_common::NodeId;
use cm_transport::{Requester, RetryPolicy};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

/// Sends requests to compute nodes without waiting for them.
pub trait NodeComm: Send {
    fn send(&mut self, node: &Node, request: NodeRequest);
}

/// A request that did not get through, reported back to the head's loop.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    pub node: NodeId,
    pub request: NodeRequest,
    /// Why, as a sentence.
    pub error: String,
}

struct Worker {
    address: String,
    queue: Sender<NodeRequest>,
}

/// Called with every request that could not be delivered.
pub type FailureSink = Arc<dyn Fn(DeliveryFailure) + Send + Sync>;

/// [`NodeComm`] over ZeroMQ: one worker thread and socket per node.
pub struct ZmqComm {
    policy: RetryPolicy,
    /// Every request to a node is sealed with it, for that node.
    key: Arc<ClusterKey>,
    me: String,
    failures: FailureSink,
    workers: HashMap<NodeId, Worker>,
}

impl ZmqComm {
    pub fn new(policy: RetryPolicy, key: Arc<ClusterKey>, me: String, failures: FailureSink) -> Self {
        ZmqComm { policy, key, me, failures, workers: HashMap::new() }
    }

    fn sealed_for(&self, node: &Node) -> Credentials {
        Credentials::Sealed { key: self.key.clone(), recipient: node_recipient(node.id.as_str()) }
    }

    fn spawn_worker(&self, node: &Node) -> Worker {
        let (queue, requests) = channel::<NodeRequest>();
        // A node address the transport cannot use fails each request, as an unreachable node's would.
        let mut requester =
            Requester::new(&node.address, self.policy, &self.me, self.sealed_for(node)).map_err(|e| e.to_string());
        let node_id = node.id.clone();
        let failures = self.failures.clone();
        let spawned = std::thread::Builder::new().name(format!("comm-{}", node.id)).spawn(move || {
            // Ends when the head drops the queue (node re-registered elsewhere, or shutdown).
            for request in requests {
                let outcome = match &mut requester {
                    Ok(requester) => requester.call::<NodeRequest, NodeResponse>(&request).map_err(|e| e.to_string()),
                    Err(unusable) => Err(unusable.clone()),
                };
                let error = match outcome {
                    Ok(Ok(_)) => continue,
                    Ok(Err(refusal)) => format!("node {node_id} refused: {}", refusal.message),
                    Err(e) => e,
                };
                tracing::warn!(node = %node_id, %error, "could not deliver a request");
                failures(DeliveryFailure { node: node_id.clone(), request, error });
            }
        });
        if let Err(e) = spawned {
            tracing::error!(node = %node.id, error = %e, "cannot start a sender thread");
        }
        Worker { address: node.address.clone(), queue }
    }
}

impl NodeComm for ZmqComm {
    fn send(&mut self, node: &Node, request: NodeRequest) {
        let stale = self.workers.get(&node.id).is_none_or(|w| w.address != node.address);
        if stale {
            // A node that re-registered at a new address gets a fresh worker; the old one ends
            // when its queue is dropped.
            let worker = self.spawn_worker(node);
            self.workers.insert(node.id.clone(), worker);
        }
        let Some(worker) = self.workers.get(&node.id) else { return };
        if let Err(returned) = worker.queue.send(request) {
            (self.failures)(DeliveryFailure {
                node: node.id.clone(),
                request: returned.0,
                error: "the node's sender thread has stopped".into(),
            });
        }
    }
}

/// A [`NodeComm`] for tests: records what would have been sent.
#[derive(Default, Clone)]
pub struct RecordingComm {
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<(NodeId, NodeRequest)>>>,
}

impl NodeComm for RecordingComm {
    fn send(&mut self, node: &Node, request: NodeRequest) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push((node.id.clone(), request));
        }
    }
}
