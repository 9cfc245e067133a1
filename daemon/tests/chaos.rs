//! Chaos: a stream of short jobs while a bounded, seeded loop crashes (SIGKILL) and restarts
//! random compute daemons and the head. Afterwards nothing acknowledged is lost, nothing ran
//! twice, and every node is back, idle, with all of its resources free.

use cm_testkit::{wait_until, Cluster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: usize = 200;

/// A small deterministic generator (xorshift), so a failing run can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn jobs_survive_crashing_daemons_exactly_once() {
    let seed = std::env::var("CM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe_u64);
    eprintln!("chaos seed {seed} (set CM_CHAOS_SEED to replay)");
    let mut cluster = Cluster::start(3, 4, 4096);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let submitting = Arc::new(AtomicBool::new(true));
    let submitter = {
        let acknowledged = acknowledged.clone();
        let submitting = submitting.clone();
        let commands: Vec<std::process::Command> = (0..JOBS)
            .map(|_| {
                cluster.tool_command("cmrun", &["--requeue", "echo $CM_JOB_ID.$CM_RESTART_COUNT >> ran.log; sleep 0.2"])
            })
            .collect();
        std::thread::spawn(move || {
            for mut command in commands {
                // Paced, so that the crashes fall among the submissions.
                std::thread::sleep(Duration::from_millis(25));
                let out = command.output().expect("cmrun");
                if let Ok(id) = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>() {
                    acknowledged.lock().expect("lock").push(id);
                }
            }
            submitting.store(false, Ordering::Relaxed);
        })
    };

    let mut rng = Rng(seed);
    let mut crashes = BTreeMap::<String, u32>::new();
    let chaos_started = Instant::now();
    // Bounded: at most 12 crashes, and none once every submission is in.
    for _ in 0..12 {
        if !submitting.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200 + rng.next(400)));
        let victim = rng.next(4);
        let down_for = Duration::from_millis(200 + rng.next(800));
        if victim == 3 {
            cluster.head.kill9();
            std::thread::sleep(down_for);
            cluster.restart_head();
            *crashes.entry("head".into()).or_default() += 1;
        } else {
            let daemon = &mut cluster.computes[victim as usize];
            daemon.kill9();
            std::thread::sleep(down_for);
            daemon.start();
            *crashes.entry(daemon.name.clone()).or_default() += 1;
        }
    }
    submitter.join().expect("submitter");
    eprintln!("crashes {crashes:?} over {:?}", chaos_started.elapsed());
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.len() > JOBS / 2, "only {} of {JOBS} submissions were acknowledged", acknowledged.len());

    // Every acknowledged job reaches exactly one terminal state.
    let info = || cluster.info().expect("cminfo");
    let terminal = |job: &Value| !matches!(job["state"]["status"].as_str(), Some("Pending" | "Running") | None);
    let settled = wait_until(Duration::from_secs(120), || {
        let out = cluster.tool("cminfo", &["--json", "--all", "--limit", "1000"]);
        let Ok(all) = serde_json::from_slice::<Value>(&out.stdout) else { return false };
        let jobs = all["jobs"].as_array().cloned().unwrap_or_default();
        acknowledged.iter().all(|id| jobs.iter().any(|j| j["id"] == *id && terminal(j)))
    });
    let out = cluster.tool("cminfo", &["--json", "--all", "--limit", "1000"]);
    let all: Value = serde_json::from_slice(&out.stdout).expect("json");
    let jobs = all["jobs"].as_array().expect("jobs").clone();
    assert!(
        settled,
        "not every acknowledged job ended: {:?}",
        jobs.iter().filter(|j| !terminal(j)).collect::<Vec<_>>()
    );
    let mut states = BTreeMap::<String, usize>::new();
    for id in &acknowledged {
        let job = jobs.iter().find(|j| j["id"] == *id).expect("every acknowledged job exists");
        *states.entry(job["state"]["status"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    let requeued = jobs.iter().filter(|j| j["run"].as_u64().unwrap_or(0) > 0).count();
    eprintln!("{} acknowledged, final states {states:?}, {requeued} requeued", acknowledged.len());

    // No run of a job started twice, and no job ran again after completing.
    let log = std::fs::read_to_string(cluster.workdir.join("ran.log")).unwrap_or_default();
    let mut runs = BTreeMap::<String, u32>::new();
    for line in log.lines() {
        *runs.entry(line.to_string()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "job runs started more than once: {twice:?}");
    for job in jobs.iter().filter(|j| j["state"]["status"] == "Completed") {
        let (id, run) = (job["id"].as_u64().expect("id"), job["run"].as_u64().expect("run"));
        assert_eq!(runs.get(&format!("{id}.{run}")), Some(&1), "completed job {id} ran its final run once");
        // Earlier runs may never have started (lost before their node got them), but none comes after.
        let prefix = format!("{id}.");
        let beyond =
            runs.keys().filter_map(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok()).filter(|&r| r > run).count();
        assert_eq!(beyond, 0, "job {id} ran again after its final run {run}");
    }

    // Every node is back, idle, with everything free.
    let back = wait_until(Duration::from_secs(30), || {
        let nodes = info()["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().filter(|n| n["role"] == "Compute").count() == 3
            && nodes.iter().all(|n| n["health"]["health"] == "Up" && n["allocations"] == Value::Array(vec![]))
    });
    assert!(back, "nodes not all back and idle: {:#}", info()["nodes"]);
    cluster.assert_alive();
}
