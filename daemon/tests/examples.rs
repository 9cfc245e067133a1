//! The jobs in `examples/` do what their comments say (the MPI ones are in `mpi.rs`).

use cm_testkit::Cluster;
use std::path::Path;

/// Copies an example into the cluster's working directory, as a user copies it home.
fn copy(cluster: &Cluster, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
    std::fs::copy(&from, cluster.workdir.join(name)).expect("copy the example");
}

fn run(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let out = cluster.tool("cmrun", args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code(), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_examples_run_as_their_comments_say() {
    let cluster = Cluster::start(2, 2, 512);
    for name in ["hello.sh", "parallel_sum.py", "times_out.sh"] {
        copy(&cluster, name);
    }
    let (code, out) = run(&cluster, &["-n", "2", "-p", "2", "--wait", "--label", "./hello.sh"]);
    assert_eq!(code, Some(0), "{out}");
    for rank in 0..4 {
        assert!(out.contains(&format!("{rank}: rank {rank} of 4 on node c")), "{out}");
    }

    let (code, out) = run(&cluster, &["-n", "2", "-p", "2", "--wait", "--label", "./parallel_sum.py", "100000"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0: total 5000050000 (expected 5000050000)"), "{out}");

    let (code, out) = run(&cluster, &["-t", "0:02", "--wait", "./times_out.sh"]);
    assert_eq!(code, Some(124), "{out}");
    assert!(out.contains("second 1") && out.contains("got SIGTERM: the time limit ran out"), "{out}");
}
