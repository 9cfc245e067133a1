//! The docker-compose simulated cluster on a real Docker engine, started as a newcomer starts it
//! (docker/up.sh: images prepared locally around the binaries of this build), 1 head + 4
//! computes + database.
//! Skips, saying why, only where no Docker engine answers.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// One compose project, taken down with its volumes on drop.
struct Compose {
    program: Vec<String>,
    project: String,
    mongo_image: String,
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo_root().join("docker-compose.yml"))
            .args(args)
            .env("CM_MONGO_IMAGE", &self.mongo_image)
            .current_dir(repo_root());
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(&mut self.command(args));
        assert!(out.status.success(), "compose {args:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A command on the head node, as `user`.
    fn head(&self, user: &str, script: &str) -> Output {
        run(&mut self.command(&["exec", "-T", "-u", user, "-w", &home(user), "head", "sh", "-c", script]))
    }

    fn info(&self) -> Option<Value> {
        let out = self.head("root", "cminfo --json --all");
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    fn job(&self, id: u64) -> Value {
        let out = self.head("root", &format!("cminfo --json {id}"));
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// The container of compute node `node` (compute-N): PROJECT_compute_N, or PROJECT-compute-N
    /// with compose v2.
    fn container(&self, node: &str) -> String {
        let n = node.strip_prefix("compute-").expect("a compute-N node");
        [format!("{}_compute_{n}", self.project), format!("{}-compute-{n}", self.project)]
            .into_iter()
            .find(|name| run(Command::new("docker").args(["inspect", name])).status.success())
            .unwrap_or_else(|| panic!("no container for {node}"))
    }

    fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Compose) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let logs = run(&mut self.command(&["logs", "--tail", "30"]));
        panic!("timed out waiting for {what}; logs:\n{}", text(&logs));
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command(&["down", "-v", "--remove-orphans", "-t", "2"]).output();
    }
}

fn home(user: &str) -> String {
    if user == "root" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

/// The compute nodes' names, sorted.
fn compute_names(compose: &Compose) -> Vec<String> {
    let info = compose.info().expect("cminfo");
    let mut names: Vec<String> = info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "Compute")
        .map(|n| n["id"].as_str().expect("id").to_string())
        .collect();
    names.sort();
    names
}

fn computes(info: &Value, status: &str) -> usize {
    info["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| {
                    n["role"] == "Compute"
                        && n["health"]["health"] == status
                        && (status != "Up" || n["allocations"] == Value::Array(vec![]))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The compose implementations installed: `docker compose` (the Go one, v2 and later, a CLI
/// plugin) and Debian's `docker-compose` 1.29. Under CI both must be (`.ci/run` installs them).
fn compose_programs() -> Vec<Vec<String>> {
    let works = |program: &[&str]| {
        Command::new(program[0]).args(&program[1..]).arg("version").output().is_ok_and(|o| o.status.success())
    };
    let programs: Vec<Vec<String>> = [&["docker", "compose"][..], &["docker-compose"][..]]
        .into_iter()
        .filter(|program| works(program))
        .map(|program| program.iter().map(|word| word.to_string()).collect())
        .collect();
    if std::env::var_os("CI").is_some() {
        assert_eq!(programs.len(), 2, "CI must have both docker compose and docker-compose (.ci/run installs them)");
    }
    programs
}

#[test]
fn the_compose_cluster_runs_a_users_job_across_containers_and_survives_a_lost_node() {
    if !Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: no Docker engine answers `docker info`");
        return;
    }
    let programs = compose_programs();
    assert!(!programs.is_empty(), "a Docker engine without docker-compose: install docker-compose");
    for program in programs {
        eprintln!("with {}", program.join(" "));
        scenario(program);
    }
}

fn scenario(program: Vec<String>) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cmd")).parent().expect("bin dir");
    let kind = if program.len() == 2 { "v2" } else { "v1" };
    let compose = Compose {
        program,
        project: format!("cmtest{}{kind}", std::process::id()),
        mongo_image: std::env::var("CM_MONGO_IMAGE").unwrap_or_else(|_| "cm-secantusdb:local".into()),
    };
    // The one command a newcomer runs (with this build's binaries rather than a release build).
    let started = Instant::now();
    let up = run(Command::new(repo_root().join("docker/up.sh"))
        .arg("4")
        .env("CM_COMPOSE", compose.program.join(" "))
        .env("CM_BIN_DIR", bin_dir)
        .env("COMPOSE_PROJECT_NAME", &compose.project));
    assert!(up.status.success(), "docker/up.sh failed:\n{}", text(&up));
    eprintln!("docker/up.sh: 4 compute nodes up in {:?}:\n{}", started.elapsed(), text(&up));
    let env = std::fs::read_to_string(repo_root().join(".env")).expect(".env");
    assert_eq!(env, "CM_MONGO_IMAGE=cm-secantusdb:local\n", "later docker-compose commands need nothing more");
    assert_eq!(compute_names(&compose), ["compute-1", "compute-2", "compute-3", "compute-4"]);
    let info = compose.info().expect("cminfo");
    for node in info["nodes"].as_array().expect("nodes").iter().filter(|n| n["role"] == "Compute") {
        // Capacity comes from the container's limits (cpus: 2, mem_limit: 512m), not the host's.
        assert_eq!(node["capacity"]["cpus"], 2, "{node}");
        assert_eq!(node["capacity"]["memory_mb"], 512, "{node}");
    }

    // The head node's tools reach the head over its Unix socket, where they look first, and which
    // a user other than root may open; every tool run below on the head goes that way.
    let out = compose.head("alice", "test -S /run/cm/head.sock && cminfo");
    assert!(out.status.success(), "{}", text(&out));
    // Every tool is there, with its man page and bash completion.
    let out = compose.head(
        "alice",
        "for t in cmrun cminfo cmkill cmacct cmctl; do grep -q \"^.TH $t 1\" /usr/local/share/man/man1/$t.1 && grep -q \"complete.*$t\" /usr/share/bash-completion/completions/$t || exit 1; done",
    );
    assert!(out.status.success(), "man pages or completions missing: {}", text(&out));
    // And what a class writes and runs programs with.
    let out =
        compose.head("alice", "for t in gcc make mpicc python3 ps nano less man; do command -v $t || exit 1; done");
    assert!(out.status.success(), "a tool is missing from the image: {}", text(&out));
    // A tool on a compute node (here, inside alice's job) reaches the head over TCP, vouched for
    // by MUNGE: each container runs munged with the key made at first start.
    let out = compose
        .head("alice", "cmrun --wait -o munge.out 'cminfo --head head:5001 --json | grep -q Compute && echo ok'");
    assert!(out.status.success(), "{}", text(&out));
    let out = compose.head("alice", "cat munge.out");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", text(&out));

    // As alice, a 2-node x 2-process job: four outputs in her home, on two different computes.
    // cmrun --wait shows each rank's lines as they are written, labelled, across the containers.
    let out = compose.head("alice", "cmrun --wait --label -n 2 -p 2 -c 1 'echo $CM_PROC_RANK $(hostname) $(id -un)'");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let id: u64 = stdout.lines().next().and_then(|l| l.parse().ok()).expect("the job id first");
    let mut shown: Vec<&str> = stdout.lines().skip(1).collect();
    shown.sort();
    assert_eq!(shown.len(), 4, "{stdout}");
    for (rank, line) in shown.iter().enumerate() {
        assert!(line.starts_with(&format!("{rank}: {rank} ")) && line.ends_with(" alice"), "{stdout}");
    }
    let out =
        compose.head("alice", &format!("for f in cmlogs/{id}/*.out; do echo \"$(stat -c %U $f) $(cat $f)\"; done"));
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let mut ranks: Vec<&str> = lines.iter().map(|l| l[1].as_str()).collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1", "2", "3"]);
    let hosts: std::collections::BTreeSet<&str> = lines.iter().map(|l| l[2].as_str()).collect();
    assert_eq!(hosts.len(), 2, "two distinct compute containers: {lines:?}");
    for line in &lines {
        assert_eq!((line[0].as_str(), line[3].as_str()), ("alice", "alice"), "owned by and run as alice: {line:?}");
    }
    let job = compose.job(id);
    assert_eq!(job["spec"]["user"]["name"], "alice");
    let table = String::from_utf8_lossy(&compose.head("alice", "cminfo --all").stdout).to_string();
    assert!(table.contains("alice") && table.contains("Completed"), "{table}");

    // A batch script of a throttled array whose #CM lines give its options, and a job that
    // waits for every task of it, across the containers.
    let sweep = "printf '#!/bin/sh\\n#CM --array 0-5%%2 -o arr.%%a.out\\necho $CM_ARRAY_TASK_ID\\n' > sweep.sh \
                 && a=$(cmrun sweep.sh) && cmrun --wait -d afterok:$a -o all.out 'cat arr.*.out | sort | tr -d \"\\n\"' \
                 && cat all.out";
    let out = compose.head("alice", sweep);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("012345"), "{}", text(&out));

    // The image's sample MPI program, built by alice with MPICH, runs as one MPI job of 4 ranks
    // over two containers (cm serves PMI; no mpiexec, no ssh).
    let out = compose.head(
        "alice",
        "cp /usr/local/share/doc/cm/examples/mpi_hello.c . && mpicc -o mpi_hello mpi_hello.c \
         && cmrun --wait --label -n 2 -p 2 -t 2 ./mpi_hello",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    let mut mpi_hosts = std::collections::BTreeSet::new();
    for rank in 0..4 {
        let said = format!("{rank}: rank {rank} of 4 on ");
        let line = stdout.lines().find(|l| l.starts_with(&said)).unwrap_or_else(|| panic!("no `{said}`: {stdout}"));
        mpi_hosts.insert(line[said.len()..].to_string());
    }
    assert_eq!(mpi_hosts.len(), 2, "two containers: {stdout}");
    assert!(stdout.contains("0: sum of ranks 6 (expected 6)"), "{stdout}");

    // Containment: each compute container puts its jobs in cgroups, so a job over its memory
    // ends OutOfMemory there too, with its peak recorded.
    for node in info["nodes"].as_array().expect("nodes").iter().filter(|n| n["role"] == "Compute") {
        assert!(node["containment"].as_str().is_some_and(|c| c.starts_with("cgroup v")), "{node}");
    }
    let out = compose
        .head("alice", "cmrun --wait --mem-per-node 32 python3 /usr/local/share/doc/cm/examples/out_of_memory.py");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    assert!(text(&out).contains("OutOfMemory"), "{}", text(&out));
    // The job id, then what the job wrote as it went.
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let hog: u64 = stdout.lines().next().and_then(|l| l.trim().parse().ok()).expect("job id");
    assert!(stdout.contains("holding 16 MB"), "{stdout}");
    let peak = compose.job(hog)["nodes"][0]["end"]["usage"]["peak_memory_bytes"].as_u64().expect("peak");
    assert!(peak <= 34 << 20, "peak {peak} over a 32 MB limit");

    // Kill a running job.
    let out = compose.head("bob", "cmrun -n 2 sleep 300");
    assert!(out.status.success(), "{}", text(&out));
    let sleeper: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("job id");
    compose.wait("the job to run", Duration::from_secs(30), |c| c.job(sleeper)["state"]["status"] == "Running");
    let out = compose.head("bob", &format!("cmkill {sleeper}"));
    assert!(out.status.success(), "{}", text(&out));
    compose.wait("the killed job's nodes to be free", Duration::from_secs(30), |c| {
        c.info().is_some_and(|i| computes(&i, "Up") == 4)
    });
    assert_eq!(compose.job(sleeper)["state"]["status"], "Killed");

    // Kill a compute's supervisor launcher while its job runs: the job still ends well, and its
    // orphaned supervisor is reaped once it exits (the containers run an init; `cmd`, which
    // does not reap strangers, is not PID 1), so no zombie is left in the container.
    let out = compose.head("alice", "cmrun -n 1 sleep 8");
    assert!(out.status.success(), "{}", text(&out));
    let orphaned: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("job id");
    compose.wait("the job to run", Duration::from_secs(30), |c| c.job(orphaned)["state"]["status"] == "Running");
    let node = compose.job(orphaned)["nodes"][0]["node"].as_str().expect("the job's node").to_string();
    // Supervisors are forks of the launcher and share its command line: the launcher is the one
    // whose parent is not a launcher (all are found before any is killed: a supervisor whose
    // launcher is gone has a new parent). `[-]` keeps this script's own command line from matching.
    let kill_launcher = r#"is_launcher() { tr '\0' ' ' < /proc/$1/cmdline 2>/dev/null | grep -q 'cmstep [-]-launcher'; }
        targets=; for p in /proc/[0-9]*; do
            pid=${p#/proc/}; parent=$(grep '^PPid:' $p/status 2>/dev/null | tr -dc 0-9)
            if is_launcher $pid && ! is_launcher $parent; then targets="$targets $pid"; fi
        done
        for pid in $targets; do kill -9 $pid && echo killed $pid; done"#;
    let out = run(Command::new("docker").args(["exec", &compose.container(&node), "sh", "-c", kill_launcher]));
    assert!(text(&out).contains("killed"), "no launcher killed on {node}: {}", text(&out));
    compose
        .wait("the orphaned job to end", Duration::from_secs(60), |c| c.job(orphaned)["state"]["status"] != "Running");
    let ended = compose.job(orphaned);
    assert_eq!(ended["state"]["status"], "Completed", "{ended}");
    let zombies = "for s in /proc/[0-9]*/status; do grep -q '^State:.*Z' $s 2>/dev/null && head -1 $s; done; true";
    let out = run(Command::new("docker").args(["exec", &compose.container(&node), "sh", "-c", zombies]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "zombies left on {node}");

    // A compute container dies (SIGKILL: no goodbye): cminfo still answers promptly, and the node
    // goes Down, as a crashed host does; started again, it comes back under its own name.
    let victim = compose.container("compute-1");
    let out = run(Command::new("docker").args(["kill", &victim]));
    assert!(out.status.success(), "{}", text(&out));
    let asked = Instant::now();
    let out = compose.head("root", "cminfo");
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("cminfo with a compute dead answered in {:?}", asked.elapsed());
    assert!(asked.elapsed() < Duration::from_secs(5), "cminfo took {:?}", asked.elapsed());
    let killed = Instant::now();
    compose.wait("the dead node to be Down", Duration::from_secs(60), |c| {
        c.info().is_some_and(|i| computes(&i, "Down") == 1)
    });
    eprintln!("a dead node was Down after {:?}", killed.elapsed());
    // The cluster still runs jobs on the other three.
    let out = compose.head("alice", "cmrun --wait -n 3 true");
    assert!(out.status.success(), "{}", text(&out));
    let out = run(Command::new("docker").args(["start", &victim]));
    assert!(out.status.success(), "{}", text(&out));
    compose.wait("the node to come back", Duration::from_secs(60), |c| {
        c.info().is_some_and(|i| computes(&i, "Up") == 4 && computes(&i, "Down") == 0)
    });
    assert_eq!(compute_names(&compose), ["compute-1", "compute-2", "compute-3", "compute-4"]);

    // Faults injected on purpose, as a class would (docs/teaching.md), each while a job spans
    // every node. A hung daemon is noticed (the freeze outlasts heartbeat_timeout, 10 s, with room
    // for the last heartbeat's age), its job ends NodeFail, and the node comes back. A crashed one
    // is restarted by its container's restart policy, faster than the head notices the silence:
    // it registers again without the job, which ends NodeFail too.
    let health = |c: &Compose, node: &str| {
        let info = c.info().unwrap_or_default();
        let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().find(|n| n["id"] == node).map(|n| n["health"]["health"].to_string()).unwrap_or_default()
    };
    for (fault, node) in [("freeze compute-2 20", "compute-2"), ("crash compute-3", "compute-3")] {
        let out = compose.head("alice", "cmrun -n 4 sleep 300");
        assert!(out.status.success(), "{}", text(&out));
        let spanning: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("job id");
        compose.wait("the job to run", Duration::from_secs(30), |c| c.job(spanning)["state"]["status"] == "Running");
        let injected = Instant::now();
        let out = compose.head("root", &format!("cmctl fault {fault}"));
        assert!(out.status.success(), "{}", text(&out));
        compose.wait(&format!("job {spanning} to end NodeFail"), Duration::from_secs(60), |c| {
            c.job(spanning)["state"]["status"] == "NodeFail"
        });
        let failed = injected.elapsed();
        compose.wait(&format!("{node} to be Up"), Duration::from_secs(90), |c| {
            health(c, node) == "\"Up\"" && c.info().is_some_and(|i| computes(&i, "Up") == 4)
        });
        let reason = compose.job(spanning)["state"]["reason"].to_string();
        assert!(reason.contains(node), "{reason}");
        eprintln!(
            "cmctl fault {fault}: the job NodeFail after {failed:?} ({reason}), every node Up after {:?}",
            injected.elapsed()
        );
    }

    // Scaling up adds compute-5 and compute-6; scaling down again removes them, leaving no
    // Down ghosts (the containers stopped on purpose leave the cluster).
    compose.ok(&["up", "-d", "--scale", "compute=6"]);
    compose.wait("6 compute nodes", Duration::from_secs(120), |c| c.info().is_some_and(|i| computes(&i, "Up") == 6));
    compose.ok(&["up", "-d", "--scale", "compute=4"]);
    compose.wait("4 compute nodes and no other", Duration::from_secs(120), |c| {
        c.info().is_some_and(|i| computes(&i, "Up") == 4 && computes(&i, "Down") == 0)
    });
    assert_eq!(compute_names(&compose), ["compute-1", "compute-2", "compute-3", "compute-4"]);

    // A job submitted from a directory the nodes do not share is taken, with a warning.
    let out = compose.head("root", "cd /root && cmrun true");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("warning: /root is not in a directory the nodes share (/home)"), "{}", text(&out));
    eprintln!("docker test done in {:?}", started.elapsed());
}
