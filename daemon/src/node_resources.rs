//! What a node offers: CPUs and memory detected from the OS, unless configured.
//!
//! CPUs come from `available_parallelism`, which honours the cgroup CPU quota and the affinity
//! mask (a container limited to 2 CPUs reports 2). Memory is the smaller of the machine's total
//! and the cgroup memory limit, as sysinfo reports them.

use cm_common::Resources;
use sysinfo::System;

/// Detected resources with the configured overrides applied.
pub fn detect(cpus: Option<u32>, memory_mb: Option<u64>) -> Resources {
    let cpus = cpus.unwrap_or_else(|| {
        std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)).unwrap_or(1)
    });
    let memory_mb = memory_mb.unwrap_or_else(|| {
        let mut system = System::new();
        system.refresh_memory();
        let mut bytes = system.total_memory();
        if let Some(limits) = system.cgroup_limits() {
            if limits.total_memory > 0 {
                bytes = bytes.min(limits.total_memory);
            }
        }
        bytes / (1024 * 1024)
    });
    Resources { cpus, memory_mb }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_detection_finds_something() {
        assert_eq!(detect(Some(3), Some(700)), Resources::new(3, 700));
        let found = detect(None, None);
        assert!(found.cpus >= 1 && found.memory_mb >= 64, "{found:?}");
    }
}
