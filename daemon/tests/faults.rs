//! Faults injected with `cmctl fault` and acted out for real on a node, watched through
//! `cminfo --json` as a class watches them: each is detected and recovered from, and the times
//! it took are printed.

use cm_testkit::{wait_until, Cluster};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn health(cluster: &Cluster, node: &str) -> String {
    let info = cluster.info().unwrap_or_default();
    let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
    let found = nodes.iter().find(|n| n["id"] == node);
    found.and_then(|n| n["health"]["health"].as_str()).unwrap_or("gone").to_string()
}

/// Waits until `node` is `status`, and says how long that took.
fn until_health(cluster: &Cluster, node: &str, status: &str, since: Instant) -> Duration {
    assert!(wait_until(LONG, || health(cluster, node) == status), "{node} is not {status}");
    since.elapsed()
}

fn fault(cluster: &Cluster, args: &[&str]) {
    let mut all = vec!["fault"];
    all.extend_from_slice(args);
    let out = cluster.tool("cmctl", &all);
    assert!(out.status.success(), "cmctl {all:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn processes_with(text: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", text]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_frozen_an_isolated_and_a_crashed_node_are_detected_and_come_back() {
    let mut cluster = Cluster::start(3, 2, 512);
    for (node, how, sleep) in [("c1", "freeze", "301"), ("c2", "isolate", "302")] {
        // A job on every node: it cannot go on without the one that fails.
        let id = cluster.submit(&["-n", "3", &format!("sleep $((300 + {}))", &sleep[2..])]);
        cluster.wait_status(id, "Running", LONG);
        let injected = Instant::now();
        fault(&cluster, &[how, node, "6"]);
        let detected = until_health(&cluster, node, "Down", injected);
        let job = cluster.wait_status(id, "NodeFail", LONG);
        assert!(job["state"]["reason"].as_str().is_some_and(|r| r.contains(node)), "{job}");
        let back = until_health(&cluster, node, "Up", injected);
        // Fencing: the node that comes back kills what the head has ended.
        assert!(wait_until(LONG, || processes_with(&format!("sleep {sleep}")) == 0), "replicas left on {node}");
        eprintln!("{how} {node} for 6 s: Down after {detected:?}, the job NodeFail, Up again after {back:?}");
    }

    let injected = Instant::now();
    fault(&cluster, &["crash", "c3"]);
    assert!(wait_until(LONG, || cluster.computes[2].exited().is_some()), "c3's daemon did not exit");
    let detected = until_health(&cluster, "c3", "Down", injected);
    cluster.computes[2].start();
    let back = until_health(&cluster, "c3", "Up", injected);
    eprintln!("crash c3: Down after {detected:?}; restarted, Up again after {back:?}");
}

#[test]
fn a_killed_rank_fails_its_job_with_that_rank_and_signal() {
    let cluster = Cluster::start(1, 2, 512);
    // Rank 0 ends by itself soon; rank 1 would sleep long, but is killed.
    let id = cluster.submit(&["-p", "2", "if [ $CM_PROC_RANK = 1 ]; then sleep $((300 + 3)); else sleep 3; fi"]);
    // Running on the head before the node has started the replicas: wait for them.
    assert!(wait_until(LONG, || processes_with("sleep 303") == 1), "the replicas run");
    let injected = Instant::now();
    fault(&cluster, &["kill-rank", &id.to_string(), "1"]);
    let job = cluster.wait_status(id, "Failed", LONG);
    eprintln!("kill-rank: the job Failed after {:?}", injected.elapsed());
    let reason = job["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("rank 1 on c1: ") && reason.contains('9'), "{job}");

    // Faults need a running job and rank, and an Up compute node.
    let id = id.to_string();
    for (args, said) in [
        (["kill-rank", id.as_str(), "0"], "is not running"),
        (["freeze", "nosuch", "5"], "there is no compute node nosuch"),
        (["isolate", "c1", "0"], "give 1 to 3600 seconds"),
    ] {
        let mut all = vec!["fault"];
        all.extend(args);
        let out = cluster.tool("cmctl", &all);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(said), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
