//! What a node offers: CPUs, memory and GPUs detected from the OS, unless configured.
//!
//! CPUs come from `available_parallelism`, which honours the cgroup CPU quota and the affinity
//! mask (a container limited to 2 CPUs reports 2). Memory is the smallest of the machine's
//! total and the memory limits of the daemon's cgroup and its ancestors (read from the cgroup the
//! daemon is in: a container given the host's cgroup file system sees the host's root there). GPUs are the NVIDIA devices that
//! `nvidia-smi` lists; a machine without it (or without GPUs) has none, which is no error.

use cm_common::Resources;
use std::path::Path;
use sysinfo::System;

/// Detected resources with the configured overrides applied.
pub fn detect(cpus: Option<u32>, memory_mb: Option<u64>, gpus: Option<u32>) -> Resources {
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
        if let Some(limit) = cm_step::cgroup::detect::Host::read().ok().and_then(|host| host.memory_limit()) {
            bytes = bytes.min(limit);
        }
        bytes / (1024 * 1024)
    });
    let gpus = gpus.unwrap_or_else(|| nvidia_gpus(Path::new("nvidia-smi")));
    Resources::new(cpus, memory_mb).with_gpus(gpus)
}

/// How many GPUs `program` (nvidia-smi) lists; 0 if it is missing or fails.
pub fn nvidia_gpus(program: &Path) -> u32 {
    let listed = std::process::Command::new(program)
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stderr(std::process::Stdio::null())
        .output();
    match listed {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let count = text.lines().filter(|line| line.trim().parse::<u32>().is_ok()).count();
            u32::try_from(count).unwrap_or(u32::MAX)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn overrides_win_and_detection_finds_something() {
        assert_eq!(detect(Some(3), Some(700), Some(2)), Resources::new(3, 700).with_gpus(2));
        let found = detect(None, None, Some(0));
        assert!(found.cpus >= 1 && found.memory_mb >= 64, "{found:?}");
    }

    #[test]
    fn gpus_are_what_nvidia_smi_lists_and_none_without_it() {
        let dir = tempfile::tempdir().expect("dir");
        let stub = dir.path().join("nvidia-smi");
        std::fs::write(&stub, "#!/bin/sh\n[ \"$1\" = --query-gpu=index ] || exit 9\nprintf '0\\n1\\n2\\n3\\n'\n")
            .expect("stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(nvidia_gpus(&stub), 4);
        let failing = dir.path().join("broken");
        std::fs::write(&failing, "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n").expect("stub");
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(nvidia_gpus(&failing), 0);
        assert_eq!(nvidia_gpus(&dir.path().join("missing")), 0);
    }
}
