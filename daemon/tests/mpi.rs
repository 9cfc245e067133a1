//! MPI programs built with MPICH run as one job across nodes, without mpiexec: cm's PMI-1 server
//! on each node, and the head between nodes, let the ranks find each other. Needs `mpicc`
//! (Debian's `mpich` and `libmpich-dev`, which `.ci/run` installs).

use cm_testkit::Cluster;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Compiles `source` into `dir/name` with mpicc; false (said why) where MPICH is not installed
/// and this is not CI, which must have it.
fn compile(source: &Path, dir: &Path, name: &str) -> bool {
    let out = Command::new("mpicc").arg("-o").arg(dir.join(name)).arg(source).output();
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!("mpicc failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: no mpicc ({e}); install Debian's mpich and libmpich-dev");
            false
        }
        Err(e) => panic!("CI must have mpicc (Debian's mpich, libmpich-dev): {e}"),
    }
}

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mpi_hello.c")
}

#[test]
fn the_sample_mpi_program_runs_as_four_ranks_over_two_nodes() {
    let cluster = Cluster::start(2, 2, 512);
    if !compile(&sample(), &cluster.workdir, "mpi_hello") {
        return;
    }
    let out = cluster.tool("cmrun", &["-n", "2", "-p", "2", "--wait", "--label", "-t", "1", "./mpi_hello"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for rank in 0..4 {
        let said = format!("{rank}: rank {rank} of 4 on ");
        assert!(stdout.lines().any(|l| l.starts_with(&said)), "no `{said}` in:\n{stdout}");
    }
    assert!(stdout.contains("0: sum of ranks 6 (expected 6)"), "{stdout}");
    let id: u64 = stdout.lines().next().and_then(|l| l.trim().parse().ok()).expect("the job id first");
    let job = cluster.job(id);
    let nodes = job["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "two nodes: {job}");

    // Without PMI each rank is an MPI program of its own.
    let out = cluster.tool("cmrun", &["-n", "2", "-p", "2", "--wait", "--mpi", "none", "./mpi_hello"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches("rank 0 of 1 on").count(), 4, "{stdout}");
}

const ABORTS: &str = r#"
#include <mpi.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    int rank;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 3)
        MPI_Abort(MPI_COMM_WORLD, 7);
    sleep(600);
    MPI_Finalize();
    return 0;
}
"#;

#[test]
fn mpi_abort_on_one_node_ends_the_whole_job_at_once() {
    let cluster = Cluster::start(2, 2, 512);
    let source = cluster.workdir.join("aborts.c");
    std::fs::write(&source, ABORTS).expect("source");
    if !compile(&source, &cluster.workdir, "aborts") {
        return;
    }
    let id = cluster.submit(&["-n", "2", "-p", "2", "./aborts"]);
    // Well before the other ranks' sleep would end.
    let job = cluster.wait_status(id, "Failed", LONG);
    let reason = job["state"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("rank 3 called MPI_Abort (error code 7), on c"), "{job}");
    let out = Command::new("pgrep").args(["-f", "./aborts"]).output().expect("pgrep");
    assert!(out.stdout.is_empty(), "every rank is gone: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_ping_pong_example_measures_between_two_nodes() {
    let cluster = Cluster::start(2, 2, 512);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mpi_pingpong.c");
    if !compile(&source, &cluster.workdir, "mpi_pingpong") {
        return;
    }
    let out = cluster.tool("cmrun", &["-n", "2", "--wait", "-t", "1", "./mpi_pingpong"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for bytes in ["       1 bytes", "      64 bytes", " 4194304 bytes"] {
        assert!(stdout.lines().any(|l| l.starts_with(bytes) && l.contains("round trip")), "{bytes}: {stdout}");
    }
}
