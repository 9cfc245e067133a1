//! Operators take nodes out and back with `cmctl`: a drained node finishes its jobs and takes
//! no new one, a resumed one takes jobs again, and a node gone for good can be forgotten.

use cm_testkit::{wait_until, Cluster};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn node(cluster: &Cluster, id: &str) -> Option<Value> {
    let info = cluster.info().expect("cminfo");
    info["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == id).cloned()
}

fn cmctl(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = cluster.tool("cmctl", args);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_drained_node_finishes_its_jobs_takes_no_new_one_until_resumed_and_a_lost_one_can_be_removed() {
    let mut cluster = Cluster::start(2, 2, 512);
    let long = cluster.submit(&["-c", "2", "sleep 3"]);
    let job = cluster.wait_status(long, "Running", LONG);
    let busy = job["nodes"][0]["node"].as_str().expect("node").to_string();
    let other = if busy == "c1" { "c2" } else { "c1" };

    assert_eq!(cmctl(&cluster, &["drain", &busy, "--reason", "new disk"]), (true, format!("{busy}: Draining\n")));
    let table = String::from_utf8_lossy(&cluster.tool("cminfo", &[]).stdout).to_string();
    assert!(table.contains("Draining: new disk (by root)"), "{table}");
    let (removed, said) = cmctl(&cluster, &["remove", &busy]);
    assert!(!removed && said.contains(&format!("still holds job(s) {long}")), "{said}");

    // A new job goes to the other node, though it would fit on the drained one once free.
    let small = cluster.submit(&["-c", "1", "true"]);
    let job = cluster.wait_status(small, "Completed", LONG);
    assert_eq!(job["nodes"][0]["node"], other);
    cluster.wait_status(long, "Completed", LONG);
    assert!(wait_until(LONG, || node(&cluster, &busy).is_some_and(|n| n["allocations"] == Value::Array(vec![]))));
    let (_, shown) = cmctl(&cluster, &["show", "node", &busy]);
    assert!(shown.contains("Drained: new disk (by root)") && shown.contains("Containment"), "{shown}");

    // A job that needs both nodes waits, and says why.
    let both = cluster.submit(&["-n", "2", "-c", "2", "true"]);
    let why = |c: &Cluster| c.job(both)["pending_reason"].clone();
    assert!(wait_until(LONG, || why(&cluster)["word"] == "NodesDown"), "{}", why(&cluster));
    let sentence = why(&cluster)["sentence"].as_str().unwrap_or_default().to_string();
    assert!(sentence.contains(&format!("drained: {busy} (new disk)")), "{sentence}");
    let table = String::from_utf8_lossy(&cluster.tool("cminfo", &[]).stdout).to_string();
    assert!(table.contains("NodesDown"), "{table}");
    assert_eq!(cmctl(&cluster, &["resume", &busy]), (true, format!("{busy}: Idle\n")));
    cluster.wait_status(both, "Completed", LONG);

    // A node that is gone: Down, then forgotten.
    let index = cluster.computes.iter().position(|c| c.name == other).expect("the other node");
    cluster.computes[index].kill9();
    assert!(wait_until(LONG, || node(&cluster, other).is_some_and(|n| n["health"]["health"] == "Down")));
    assert_eq!(cmctl(&cluster, &["remove", other]), (true, format!("{other}: removed\n")));
    assert!(node(&cluster, other).is_none(), "gone from the listings");
    let (known, said) = cmctl(&cluster, &["resume", other]);
    assert!(!known && said.starts_with(&format!("cmctl: there is no compute node {other}")), "{said}");
}
