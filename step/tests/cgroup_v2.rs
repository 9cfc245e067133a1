//! A job cgroup on the real cgroup v2 hierarchy: a process joins it by writing `0`, what it
//! starts (a `setsid` grandchild too) is inside, `cgroup.kill` ends them all, and `cpu.stat`
//! counts their CPU time. On a hybrid host (v1 controllers, as this project's machines have) the
//! unified hierarchy has no cpuset, memory or pids controller, so only these are tried here; the
//! limits are tried on v1 by `daemon/tests/cgroups.rs`.

use cm_step::cgroup::{detect, Hierarchy, JobCgroup, Limits};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh directory in this process's cgroup on the unified hierarchy, or `None` (outside CI)
/// where there is none to write.
fn unified_parent() -> Option<PathBuf> {
    let host = detect::Host::read().expect("/proc/self");
    let mount = host.mounts.iter().find(|m| m.unified).cloned();
    let own = host.own.iter().find(|(controllers, _)| controllers.is_empty()).map(|(_, path)| path.clone());
    let found = match (mount, own) {
        (Some(mount), Some(own)) if mount.root == "/" => {
            let dir =
                mount.mount_point.join(own.trim_start_matches('/')).join(format!("cm-test.{}", std::process::id()));
            std::fs::create_dir(&dir).map(|()| dir).map_err(|e| format!("cannot create a cgroup: {e}"))
        }
        _ => Err("no cgroup2 file system is mounted".to_string()),
    };
    match found {
        Ok(dir) => Some(dir),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "the cgroup v2 test must run in CI: {why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z')))
}

#[test]
fn a_v2_job_cgroup_holds_what_its_processes_start_kills_them_all_and_counts_their_cpu() {
    let Some(parent) = unified_parent() else { return };
    let hierarchy = Hierarchy::V2 { parent: parent.clone() };
    let mut cgroup = JobCgroup::create(&hierarchy, "job.1.0", &Limits::default()).expect("create");
    let procs = cgroup.procs_files()[0].clone();
    let files = tempfile::tempdir().expect("tempdir");
    let escaped = files.path().join("escaped.pid");
    let script = format!(
        "echo 0 > {procs}; setsid sh -c 'sleep 300 & echo $! > {escaped}'; \
         timeout 1 sh -c 'while :; do :; done'; sleep 300",
        procs = procs.display(),
        escaped = escaped.display()
    );
    let mut shell = Command::new("sh").arg("-c").arg(&script).spawn().expect("sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !escaped.exists() || cgroup.pids().len() < 3 {
        assert!(Instant::now() < deadline, "the job's processes did not all join: {:?}", cgroup.pids());
        std::thread::sleep(Duration::from_millis(20));
    }
    let grandchild: i32 = std::fs::read_to_string(&escaped).expect("pid").trim().parse().expect("a pid");
    assert!(cgroup.pids().iter().any(|p| p.as_raw() == grandchild), "the setsid grandchild is in the cgroup");
    std::thread::sleep(Duration::from_millis(1200)); // the busy loop's second
    cgroup.kill_all();
    let status = shell.wait().expect("wait");
    assert!(!status.success(), "the shell was killed: {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(grandchild) {
        assert!(Instant::now() < deadline, "the setsid grandchild survived cgroup.kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let usage = cgroup.usage();
    let cpu = usage.cpu_time_ms.expect("cpu.stat");
    assert!((500..5000).contains(&cpu), "{cpu} ms of CPU for a one-second busy loop");
    let dir = procs.parent().expect("dir").to_path_buf();
    cgroup.remove();
    assert!(!dir.exists(), "the cgroup is removed");
    std::fs::remove_dir(&parent).expect("remove the test's cgroup");
}
