//! Nodes as the head knows them: address, capacity, reservations and health.

use crate::{JobId, NodeId, Resources, Timestamp};
use serde::{Deserialize, Serialize};

/// The part a node plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Head,
    Compute,
}

/// Whether the head hears from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "health")]
pub enum NodeHealth {
    Up,
    Down { since: Timestamp, reason: String },
}

/// An operator's order that a node take no new jobs (`cmctl drain`), and who gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
    /// Who drained it: their uid and, for display, their name.
    pub by_uid: u32,
    pub by: String,
    pub since: Timestamp,
}

/// Resources one job holds on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub job: JobId,
    pub resources: Resources,
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub role: Role,
    /// ZeroMQ endpoint the head reaches the node at, e.g. `tcp://10.0.0.5:5002`.
    pub address: String,
    pub capacity: Resources,
    /// What running (or still dying) jobs hold here.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    pub health: NodeHealth,
    /// `None`: the daemon runs as root and can run jobs as any user.
    /// `Some(uid)`: it runs as that ordinary user and can run only that user's jobs.
    #[serde(default)]
    pub only_uid: Option<u32>,
    /// How the node contains its jobs: `cgroup v2`, `cgroup v1`, or `none: WHY`; empty when the
    /// node did not say.
    #[serde(default)]
    pub containment: String,
    /// Set while an operator has the node drained: it takes no new job.
    #[serde(default)]
    pub drain: Option<Drain>,
    pub registered_at: Timestamp,
    pub last_heartbeat: Timestamp,
}

/// What tables show in the Status column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Idle,
    InUse,
    /// Drained by an operator, still running jobs.
    Draining,
    /// Drained by an operator, and idle: ready for maintenance.
    Drained,
    Down,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Idle => "Idle",
            NodeStatus::InUse => "InUse",
            NodeStatus::Draining => "Draining",
            NodeStatus::Drained => "Drained",
            NodeStatus::Down => "Down",
        })
    }
}

impl Node {
    /// A node just registered at `now`: up, holding nothing, its containment not yet told.
    pub fn new(id: NodeId, role: Role, address: String, capacity: Resources, now: Timestamp) -> Node {
        Node {
            id,
            role,
            address,
            capacity,
            allocations: vec![],
            health: NodeHealth::Up,
            only_uid: None,
            containment: String::new(),
            drain: None,
            registered_at: now,
            last_heartbeat: now,
        }
    }

    pub fn allocated(&self) -> Resources {
        self.allocations.iter().fold(Resources::default(), |sum, a| sum.saturating_add(&a.resources))
    }

    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated())
    }

    pub fn is_up(&self) -> bool {
        self.health == NodeHealth::Up
    }

    pub fn status(&self) -> NodeStatus {
        match (&self.health, self.drain.is_some(), self.allocations.is_empty()) {
            (NodeHealth::Down { .. }, _, _) => NodeStatus::Down,
            (NodeHealth::Up, true, true) => NodeStatus::Drained,
            (NodeHealth::Up, true, false) => NodeStatus::Draining,
            (NodeHealth::Up, false, true) => NodeStatus::Idle,
            (NodeHealth::Up, false, false) => NodeStatus::InUse,
        }
    }

    /// Up and not drained: the scheduler may place jobs here.
    pub fn takes_jobs(&self) -> bool {
        self.is_up() && self.drain.is_none()
    }

    pub fn can_run_as(&self, uid: u32) -> bool {
        self.only_uid.is_none_or(|only| only == uid)
    }

    /// Releases what `job` holds here; returns whether it held anything.
    pub fn release(&mut self, job: JobId) -> bool {
        let before = self.allocations.len();
        self.allocations.retain(|a| a.job != job);
        before != self.allocations.len()
    }
}
