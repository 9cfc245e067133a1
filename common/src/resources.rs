//! Resources a node offers and a job reserves on each of its nodes.

use serde::{Deserialize, Serialize};

/// An amount of CPUs and memory: a node's capacity, or what one job reserves on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

impl Resources {
    pub fn new(cpus: u32, memory_mb: u64) -> Self {
        Resources { cpus, memory_mb }
    }

    /// Whether `need` fits inside `self`.
    pub fn contains(&self, need: &Resources) -> bool {
        self.cpus >= need.cpus && self.memory_mb >= need.memory_mb
    }

    /// `self - other`, never below zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_sub(other.cpus),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(other.cpus),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
        }
    }
}
