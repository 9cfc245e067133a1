//! Scheduling on real daemons: a wide job first in line gets a reservation that a short job may
//! backfill around and a long one may not, and starts no later than reserved; partitions refuse
//! what is over their limits and keep their jobs on their nodes; holds and priorities change
//! with `cmctl`; `cminfo` shows it all.

use cm_testkit::{wait_until, Cluster, StoreKind, TEST_CONFIG};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn cluster() -> Cluster {
    let config = format!(
        "{TEST_CONFIG}partitions:\n\
         - {{name: batch, nodes: [\"c*\"], default: true, max_time: \"10\"}}\n\
         - {{name: short, nodes: [c2], max_time: \"1\", max_nodes: 1, priority: 100}}\n"
    );
    Cluster::start_with(&StoreKind::Embedded, 2, 2, 512, &config, "info,cm_daemon=debug")
}

fn text(cluster: &Cluster, tool: &str, args: &[&str]) -> (bool, String) {
    let out = cluster.tool(tool, args);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn millis(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not a time: {value}"))
}

#[test]
fn a_short_job_backfills_around_the_wide_job_first_in_line_which_starts_no_later_than_reserved() {
    let cluster = cluster();
    let long = cluster.submit(&["-c", "2", "-t", "0:08", "sleep 5"]);
    let running = cluster.wait_status(long, "Running", LONG);
    let long_node = running["nodes"][0]["node"].as_str().expect("node").to_string();
    let wide = cluster.submit(&["-n", "2", "-c", "2", "-t", "1", "true"]);
    let too_long = cluster.submit(&["-c", "2", "-t", "0:30", "true"]);
    let short = cluster.submit(&["-c", "2", "-t", "0:03", "sleep 1"]);

    // The short job ends before the long one's limit runs out: it starts on the other node.
    let job = cluster.wait_status(short, "Running", LONG);
    assert_ne!(job["nodes"][0]["node"], long_node.as_str());
    let why = cluster.job(wide)["pending_reason"].clone();
    assert_eq!(why["word"], "Resources", "{why}");
    let expected = millis(&why["expected_start"]);
    let started = millis(&running["state"]["started_at"]);
    assert!((started + 7_000..=started + 9_000).contains(&expected), "{why}: 8 s after {started}");
    assert_eq!(why["reserved_nodes"], serde_json::json!(["c1", "c2"]));
    let (_, shown) = text(&cluster, "cminfo", &[&wide.to_string()]);
    assert!(shown.contains("Expected start") && shown.contains("c1, c2 (reserved)"), "{shown}");
    let (_, table) = text(&cluster, "cminfo", &[]);
    assert!(table.contains("Resources") && table.contains("Priority"), "{table}");
    assert_eq!(cluster.job(too_long)["pending_reason"]["word"], "Priority", "it would delay the wide job");

    // The wide job starts by its reservation, and the long job after it.
    let job = cluster.wait_status(wide, "Completed", LONG);
    assert!(millis(&job["state"]["started_at"]) <= expected + 500, "{job:#}");
    let last = cluster.wait_status(too_long, "Completed", LONG);
    assert!(millis(&last["state"]["started_at"]) >= millis(&job["state"]["started_at"]), "{last:#}");
}

#[test]
fn partitions_refuse_what_is_over_their_limits_and_keep_their_jobs_on_their_nodes() {
    let cluster = cluster();
    let (ok, said) = text(&cluster, "cmrun", &["-P", "short", "-t", "5", "true"]);
    assert!(!ok && said.trim_end().lines().count() == 1, "{said}");
    assert!(
        said.contains("partition short takes jobs with a time limit of at most 00:01:00; this one has 00:05:00"),
        "{said}"
    );
    let (ok, said) = text(&cluster, "cmrun", &["-P", "short", "-n", "2", "true"]);
    assert!(!ok && said.contains("at most 1 node(s)"), "{said}");
    let (ok, said) = text(&cluster, "cmrun", &["-P", "gpu", "true"]);
    assert!(!ok && said.contains("no partition \"gpu\"; the partitions are batch, short"), "{said}");

    let quick = cluster.submit(&["-P", "short", "-c", "2", "true"]);
    let job = cluster.wait_status(quick, "Completed", LONG);
    assert_eq!((job["nodes"][0]["node"].as_str(), job["spec"]["time_limit_secs"].as_u64()), (Some("c2"), Some(60)));
    let (_, table) = text(&cluster, "cminfo", &["--partitions"]);
    assert!(table.contains("batch*") && table.contains("c1,c2") && table.contains("00:01:00"), "{table}");
    let (_, shown) = text(&cluster, "cmctl", &["show", "partition", "short"]);
    assert!(shown.contains("Max nodes/job") && shown.contains("c2 (c2)"), "{shown}");

    // Held (priority 0) by root: it waits, saying so, until released.
    let held = cluster.submit(&["--priority", "0", "true"]);
    assert!(wait_until(LONG, || cluster.job(held)["pending_reason"]["word"] == "JobHeldAdmin"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.job_status(held), "Pending");
    let (ok, said) = text(&cluster, "cmctl", &["update", "job", &held.to_string(), "priority=auto"]);
    assert!(ok, "{said}");
    cluster.wait_status(held, "Completed", LONG);
    let (ok, said) = text(&cluster, "cmctl", &["update", "job", &held.to_string(), "nice=1"]);
    assert!(!ok && said.contains("only a pending job can change"), "{said}");
    let (ok, said) = text(&cluster, "cmctl", &["update", "job", &held.to_string(), "size=1"]);
    assert!(!ok && said.contains("priority and nice can change"), "{said}");
}
