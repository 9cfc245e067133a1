//! Resources a node offers and a job reserves on each of its nodes.

use serde::{Deserialize, Serialize};

/// An amount of CPUs, memory and GPUs: a node's capacity, or what one job reserves on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// GPUs (NVIDIA, by index on the node).
    #[serde(default)]
    pub gpus: u32,
}

impl Resources {
    /// CPUs and memory, no GPU.
    pub fn new(cpus: u32, memory_mb: u64) -> Self {
        Resources { cpus, memory_mb, gpus: 0 }
    }

    pub fn with_gpus(self, gpus: u32) -> Self {
        Resources { gpus, ..self }
    }

    /// Whether `need` fits inside `self`.
    pub fn contains(&self, need: &Resources) -> bool {
        self.cpus >= need.cpus && self.memory_mb >= need.memory_mb && self.gpus >= need.gpus
    }

    /// `self - other`, never below zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_sub(other.cpus),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(other.cpus),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_count_like_cpus_and_memory_and_older_records_have_none() {
        let node = Resources::new(4, 1024).with_gpus(2);
        assert!(node.contains(&Resources::new(1, 100).with_gpus(2)));
        assert!(!node.contains(&Resources::new(1, 100).with_gpus(3)));
        assert_eq!(node.saturating_sub(&Resources::new(1, 24).with_gpus(1)), Resources::new(3, 1000).with_gpus(1));
        #[derive(Serialize)]
        struct Older {
            cpus: u32,
            memory_mb: u64,
        }
        let bytes = rmp_serde::to_vec_named(&Older { cpus: 2, memory_mb: 512 }).expect("encode");
        assert_eq!(rmp_serde::from_slice::<Resources>(&bytes).expect("decode"), Resources::new(2, 512));
    }
}
