//! Faults an operator injects on this node (`cmctl fault`), acted out for real, so the head
//! detects them as it would the real thing: a crash exits the daemon, a freeze stops its process,
//! an isolation silences it (no heartbeats, no reports, no answers), and a rank is killed.

use cm_common::JobId;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Stops this process for `seconds`, as a hung daemon: a helper process stops it, waits and lets
/// it go on. The node's jobs, under their own supervisors, run on meanwhile.
pub fn freeze(seconds: u32) -> std::io::Result<()> {
    let me = std::process::id();
    let script = format!("kill -STOP {me}; sleep {seconds}; kill -CONT {me}");
    let mut helper = std::process::Command::new("/bin/sh").args(["-c", &script]).spawn()?;
    std::thread::spawn(move || {
        let _ = helper.wait();
    });
    Ok(())
}

/// Until when the node is cut off from the head (milliseconds since the epoch; 0: it is not),
/// shared by the compute loop and the head link.
#[derive(Clone, Default)]
pub struct Isolation(Arc<AtomicU64>);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Isolation {
    pub fn begin(&self, seconds: u32) {
        self.0.store(now_ms() + u64::from(seconds) * 1000, Ordering::Relaxed);
    }

    /// Whether nothing may pass between the node and the head now.
    pub fn active(&self) -> bool {
        now_ms() < self.0.load(Ordering::Relaxed)
    }

    /// How long it still lasts.
    pub fn left(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed).saturating_sub(now_ms()))
    }
}

/// Kills (SIGKILL, its whole process group) the replica of `job` with rank `rank`, a child of
/// the supervisor `supervisor`: it is found by its `CM_JOB_ID` and `CM_PROC_RANK`.
pub fn kill_rank(supervisor: i32, job: JobId, rank: u64) -> Result<(), String> {
    let wanted = [format!("CM_JOB_ID={job}"), format!("CM_PROC_RANK={rank}")];
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot read /proc: {e}"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if parent_of(pid) != Some(supervisor) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        if wanted.iter().all(|w| vars.contains(&w.as_bytes())) {
            // Each replica leads a process group of its own.
            return killpg(Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| format!("cannot kill rank {rank}: {e}"));
        }
    }
    Err(format!("rank {rank} of job {job} does not run here (under supervisor {supervisor})"))
}

/// The parent of process `pid`, from `/proc/PID/stat` (the field after the command's `)`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_parent_is_read_from_proc() {
        assert_eq!(parent_of(std::process::id() as i32), Some(nix::unistd::getppid().as_raw()));
    }

    #[test]
    fn an_isolation_lasts_as_long_as_asked() {
        let isolation = Isolation::default();
        assert!(!isolation.active());
        isolation.begin(60);
        assert!(isolation.active() && isolation.left() > Duration::from_secs(58));
    }
}
