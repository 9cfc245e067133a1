//! What a job reserves is what it gets, in real cgroups on this machine: its CPUs, its memory,
//! a cap on its processes, and a kill that reaches every process it started. `cmacct` then
//! accounts for all of it.
//!
//! These tests need the cpuset, memory and pids controllers (cgroup v1 or v2) and root; where
//! the machine lacks them they say so, and under CI they fail rather than skip.

use cm_testkit::{process_alive, wait_until, Cluster, StoreKind, TEST_CONFIG};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A cluster of one 2-CPU node whose jobs may have 40 processes, or `None` (outside CI) where
/// the node cannot contain its jobs.
fn contained_cluster() -> Option<Cluster> {
    let config = format!("{TEST_CONFIG}cgroups:\n  max_pids_per_job: 40\n");
    let cluster = Cluster::start_with(&StoreKind::Embedded, 1, 2, 4096, &config, "info");
    let info = cluster.info().expect("cminfo");
    let node = info["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == "c1").expect("c1").clone();
    let containment = node["containment"].as_str().unwrap_or_default().to_string();
    if containment.starts_with("cgroup v") {
        return Some(cluster);
    }
    let problem = format!("the compute node cannot contain jobs here ({containment:?}): cgroup tests need root and the cpuset, memory and pids controllers");
    assert!(std::env::var_os("CI").is_none(), "{problem}");
    eprintln!("SKIPPED: {problem}");
    None
}

fn node_usage(job: &Value) -> Value {
    job["nodes"][0]["end"]["usage"].clone()
}

fn elapsed_ms(job: &Value) -> u64 {
    let state = &job["state"];
    state["ended_at"].as_u64().expect("ended") - state["started_at"].as_u64().expect("started")
}

#[test]
fn a_job_gets_its_cpus_its_memory_a_capped_process_count_and_a_kill_that_reaches_every_process() {
    let Some(mut cluster) = contained_cluster() else { return };

    // CPUs: two jobs of one CPU each, at once, each spinning four busy loops for 3 s. The node
    // gives each its own core, so each gets about one core's worth of CPU time per second.
    let spin = "grep Cpus_allowed_list /proc/self/status | cut -f2 > cpus.$CM_JOB_ID; nproc > nproc.$CM_JOB_ID; \
                echo \"$CM_CPUS $CM_JOB_CPUS\" > env.$CM_JOB_ID; \
                for i in 1 2 3 4; do timeout 3 sh -c 'while :; do :; done' & done; wait";
    let spinners = [cluster.submit(&["-c", "1", spin]), cluster.submit(&["-c", "1", spin])];
    let read =
        |name: String| std::fs::read_to_string(cluster.workdir.join(name)).expect("job output").trim().to_string();
    let mut cpus = Vec::new();
    for id in spinners {
        let job = cluster.wait_status(id, "Completed", LONG);
        let (used, elapsed) = (node_usage(&job)["cpu_time_ms"].as_u64().expect("cpu time"), elapsed_ms(&job));
        assert!(
            used <= elapsed * 13 / 10 && used >= elapsed / 2,
            "job {id} used {used} ms of CPU in {elapsed} ms: more than one core, or next to none"
        );
        assert_eq!(read(format!("nproc.{id}")), "1");
        let allowed = read(format!("cpus.{id}"));
        assert_eq!(read(format!("env.{id}")), format!("1 {allowed}"), "CM_CPUS and CM_JOB_CPUS");
        eprintln!("job {id}: {used} ms CPU in {elapsed} ms on {allowed}");
        cpus.push(allowed);
    }
    assert_ne!(cpus[0], cpus[1], "two jobs at once on a 2-CPU node get different CPUs");

    // Memory: 256 MB asked of a job that may use 64 MB ends OutOfMemory, with its peak.
    let hog = cluster.tool("cmrun", &["--wait", "--mem-per-node", "64", "perl -e '$x = \"x\" x (256 << 20)'"]);
    let said = String::from_utf8_lossy(&hog.stderr).to_string();
    assert_eq!(hog.status.code(), Some(137), "{said}");
    assert!(said.contains("OutOfMemory") && said.contains("ran out of memory") && said.contains("64 MB"), "{said}");
    let hog_id = last_job(&cluster);
    let job = cluster.wait_status(hog_id, "OutOfMemory", LONG);
    let usage = node_usage(&job);
    let peak = usage["peak_memory_bytes"].as_u64().expect("peak");
    assert!(peak > 32 << 20 && peak <= 66 << 20, "peak {peak} bytes, for a 64 MB limit");
    assert!(usage["oom_kills"].as_u64() >= Some(1), "{usage}");
    let detail = cluster.tool("cminfo", &[&hog_id.to_string()]);
    let detail = String::from_utf8_lossy(&detail.stdout).to_string();
    assert!(
        detail.contains("OutOfMemory") && detail.contains("ran out of memory") && detail.contains("Peak memory"),
        "{detail}"
    );

    // Processes: a fork bomb stops at the job's 40 processes and does not outlive the job.
    let bomb = cluster.submit(&["for i in $(seq 100); do sleep 61 & echo $i > forked; done"]);
    cluster.wait_status(bomb, "Failed", LONG);
    let forked: u32 = read("forked".into()).parse().expect("a count");
    assert!((20..40).contains(&forked), "{forked} background processes started under a cap of 40");
    let sleepers = std::process::Command::new("pgrep").args(["-f", "^sleep 61$"]).output().expect("pgrep");
    assert!(
        sleepers.stdout.is_empty(),
        "the bomb's processes outlived it: {}",
        String::from_utf8_lossy(&sleepers.stdout)
    );

    // Kill: a grandchild that left the job's process group and session dies with `cmkill`.
    let escaper = cluster.submit(&["setsid sh -c 'sleep 300 & echo $! > escaped.pid'; sleep 300"]);
    cluster.wait_status(escaper, "Running", LONG);
    let err =
        |id: u64| std::fs::read_to_string(cluster.workdir.join(format!("cmlogs/{id}/c1.0.err"))).unwrap_or_default();
    assert!(wait_until(LONG, || cluster.workdir.join("escaped.pid").exists()), "{}", err(escaper));
    let escaped: i32 = read("escaped.pid".into()).parse().expect("pid");
    assert!(process_alive(escaped));
    let out = cluster.tool("cmkill", &[&escaper.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_status(escaper, "Killed", LONG);
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(escaped)),
        "the daemonised grandchild {escaped} survived cmkill"
    );

    // The time limit reaches such a grandchild too.
    let limited = cluster.submit(&["-t", "0:02", "setsid sh -c 'sleep 305 & echo $! > limited.pid'; sleep 300"]);
    cluster.wait_status(limited, "TimedOut", LONG);
    let limited_pid: i32 = read("limited.pid".into()).parse().expect("pid");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(limited_pid)),
        "the daemonised grandchild {limited_pid} outlived the time limit"
    );

    // A supervisor killed outright leaves its job's processes behind; the node kills them.
    let orphan = cluster.submit(&["setsid sh -c 'sleep 303 & echo $! > orphaned.pid'; exec sleep 304"]);
    cluster.wait_status(orphan, "Running", LONG);
    assert!(wait_until(LONG, || cluster.workdir.join("orphaned.pid").exists()));
    let orphaned: i32 = read("orphaned.pid".into()).parse().expect("pid");
    let replica = std::process::Command::new("pgrep").args(["-f", "^sleep 304$"]).output().expect("pgrep");
    let replica: i32 = String::from_utf8_lossy(&replica.stdout).trim().parse().expect("the replica's pid");
    let supervisor = parent_of(replica);
    assert!(supervisor > 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let lost = cluster.wait_status(orphan, "NodeFail", LONG);
    assert!(lost["state"]["reason"].as_str().is_some_and(|r| r.contains("supervisor")), "{lost}");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(orphaned) && !process_alive(replica)),
        "the job's processes outlived its supervisor"
    );

    // Accounting: cmacct lists all of them from the store, with states and figures.
    let ids: Vec<String> = spinners.iter().chain(&[hog_id, bomb, escaper]).map(u64::to_string).collect();
    let out = cluster
        .tool("cmacct", &["--json", "--jobs", &ids.join(","), "--format", "jobid,state,totalcpu,maxrss,exitcode"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let states: Vec<&str> = rows.iter().map(|r| r["state"].as_str().unwrap_or_default()).collect();
    assert_eq!(states, ["Completed", "Completed", "OutOfMemory", "Failed", "Killed"], "{rows:?}");
    assert!(rows[0]["totalcpu"].as_str().is_some_and(|t| t != "-"), "{rows:?}");
    assert!(rows[2]["maxrss"].as_str().is_some_and(|m| m.ends_with('M')), "{rows:?}");
    assert_eq!(rows[2]["exitcode"], "137", "{rows:?}");
    let table = cluster.tool("cmacct", &["--state", "OutOfMemory", "--allusers"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.contains(&hog_id.to_string()) && !table.contains(&format!(" {bomb} ")), "{table}");

    // The accounting is the store's: a restarted head gives the same.
    let before = out.stdout;
    cluster.restart_head();
    let again = |c: &Cluster| {
        c.tool("cmacct", &["--json", "--jobs", &ids.join(","), "--format", "jobid,state,totalcpu,maxrss,exitcode"])
    };
    assert!(wait_until(LONG, || again(&cluster).status.success()), "the head did not come back");
    assert_eq!(String::from_utf8_lossy(&again(&cluster).stdout), String::from_utf8_lossy(&before));
}

/// The parent of process `pid`.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // PID (COMM) STATE PPID ...: the command may hold spaces, so count from its closing bracket.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after.split_whitespace().nth(1).expect("ppid").parse().expect("a number")
}

/// The id of the newest job.
fn last_job(cluster: &Cluster) -> u64 {
    let info = cluster.info().expect("cminfo");
    info["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["id"].as_u64()).max().expect("a job")
}
