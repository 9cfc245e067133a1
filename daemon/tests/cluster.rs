//! End-to-end tests: real `cmd` daemons (a head and up to three computes) and the real tools.
//! Each case runs twice: with the embedded store (`embedded::`) and with MongoDB (`mongodb::`).

use cm_testkit::{process_alive, wait_until, Cluster, StoreKind};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a freshly copied binary. A test thread that forks while the copy is still open for
/// writing makes its child hold that descriptor until it execs, and exec of the copy meanwhile
/// fails with ETXTBSY ("text file busy"): retry until that child has moved on.
fn output_when_not_busy(mut command: std::process::Command) -> std::process::Output {
    for _ in 0..100 {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            result => return result.expect("run the copied tool"),
        }
    }
    panic!("the copied tool stayed busy for 2 s");
}

/// The nodes as `cminfo --json` shows them (none if cminfo fails).
fn node_docs(cluster: &Cluster) -> Vec<Value> {
    cluster.info().and_then(|i| i["nodes"].as_array().cloned()).unwrap_or_default()
}

/// Whether no live node holds any reservation.
fn all_free(cluster: &Cluster) -> bool {
    node_docs(cluster)
        .iter()
        .filter(|n| n["health"]["health"] == "Up")
        .all(|n| n["allocations"] == Value::Array(vec![]))
}

/// The nodes of a job, in node-rank order.
fn job_nodes(cluster: &Cluster, id: u64) -> Vec<String> {
    let job = cluster.job(id);
    job["nodes"].as_array().expect("nodes").iter().map(|n| n["node"].as_str().expect("id").to_string()).collect()
}

/// Pids written by replicas as `pid.<rank>` files in the work directory.
fn replica_pids(cluster: &Cluster, ranks: usize) -> Vec<i32> {
    let files: Vec<_> = (0..ranks).map(|r| cluster.workdir.join(format!("pid.{r}"))).collect();
    assert!(
        wait_until(LONG, || files.iter().all(|f| f.exists() && !read(f.clone()).trim().is_empty())),
        "replicas did not start"
    );
    files.into_iter().map(|f| read(f).trim().parse().expect("pid")).collect()
}

fn a_two_node_two_process_job_writes_four_outputs_with_ranks_and_node_list(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 3, 2, 512);
    let id = cluster.submit(&[
        "-n",
        "2",
        "-p",
        "2",
        "-a",
        "ranks",
        "echo $CM_JOB_ID $CM_JOB_NAME $CM_NNODES $CM_NODE_RANK $CM_NPROCS_PER_NODE $CM_PROC_RANK $CM_LOCAL_RANK $CM_NODELIST $CM_SUBMIT_DIR $(pwd)",
    ]);
    let job = cluster.wait_status(id, "Completed", LONG);
    let nodes: Vec<String> =
        job["nodes"].as_array().expect("nodes").iter().map(|n| n["node"].as_str().expect("id").to_string()).collect();
    assert_eq!(nodes.len(), 2);
    assert_ne!(nodes[0], nodes[1], "two distinct nodes");
    let workdir = cluster.workdir.to_str().expect("utf8").to_string();
    let mut ranks = BTreeSet::new();
    for (node_rank, node) in nodes.iter().enumerate() {
        for local in 0..2u32 {
            let rank = node_rank as u32 * 2 + local;
            let out = read(cluster.workdir.join(format!("cmlogs/{id}/{node}.{rank}.out")));
            let fields: Vec<&str> = out.split_whitespace().collect();
            let want = [
                id.to_string(),
                "ranks".into(),
                "2".into(),
                node_rank.to_string(),
                "2".into(),
                rank.to_string(),
                local.to_string(),
                nodes.join(","),
                workdir.clone(),
                workdir.clone(),
            ];
            assert_eq!(fields, want, "rank {rank} on {node}");
            assert!(cluster.workdir.join(format!("cmlogs/{id}/{node}.{rank}.err")).exists());
            ranks.insert(rank);
        }
    }
    assert_eq!(ranks.len(), 4);
    assert!(all_free(&cluster), "every reservation was given back: {:#?}", node_docs(&cluster));
    cluster.assert_alive();
}

fn a_job_larger_than_the_cluster_is_refused_at_submit_time(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 3, 2, 512);
    for args in [&["-n", "4", "true"][..], &["-c", "3", "true"], &["--mem-per-node", "1024", "true"]] {
        let out = cluster.tool("cmrun", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("cmrun: the job asks for"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = cluster.tool("cmrun", &["-t", "whenever", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid time limit"));
    let info = cluster.info().expect("cminfo");
    assert_eq!(info["jobs"], Value::Array(vec![]), "nothing was queued");
}

fn a_job_that_must_wait_starts_when_resources_free(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 1, 2, 512);
    let first = cluster.submit(&["-c", "2", "sleep 1.5"]);
    let second = cluster.submit(&["-c", "1", "true"]);
    cluster.wait_status(first, "Running", LONG);
    assert_eq!(cluster.job_status(second), "Pending", "strict FIFO: the node is full");
    let first_job = cluster.wait_status(first, "Completed", LONG);
    let second_job = cluster.wait_status(second, "Completed", LONG);
    let first_end = first_job["state"]["ended_at"].as_u64().expect("ended");
    let second_start = second_job["state"]["started_at"].as_u64().expect("started");
    assert!(second_start >= first_end, "the second job started ({second_start}) after the first ended ({first_end})");
}

fn cmkill_removes_a_pending_job_for_good(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 1, 1, 512);
    let blocker = cluster.submit(&["sleep 300"]);
    let pending = cluster.submit(&["touch should-not-exist"]);
    cluster.wait_status(blocker, "Running", LONG);
    let out = cluster.tool("cmkill", &[&pending.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("killed 1 job: {pending}"));
    assert_eq!(cluster.job_status(pending), "Killed");
    let out = cluster.tool("cmkill", &[&blocker.to_string()]);
    assert!(out.status.success());
    cluster.wait_status(blocker, "Killed", LONG);
    // With the node free again, the killed job must still never run.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!cluster.workdir.join("should-not-exist").exists(), "a killed pending job ran");
    // Killing again, or a job that never existed, is a clear error.
    let again = cluster.tool("cmkill", &[&pending.to_string(), "999"]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already ended") && err.contains("job 999 does not exist"), "{err}");
}

fn cmkill_of_a_running_job_kills_every_replica_on_every_node_and_frees_them(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 3, 2, 512);
    // `exec` makes the shell's pid the sleeper's, so the pid file names the replica itself.
    let id = cluster.submit(&["-n", "2", "-p", "2", "echo $$ > pid.$CM_PROC_RANK; exec sleep 300"]);
    let pids = replica_pids(&cluster, 4);
    assert!(pids.iter().all(|&p| process_alive(p)));
    let out = cluster.tool("cmkill", &[&id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(LONG, || pids.iter().all(|&p| !process_alive(p))), "replicas survived cmkill");
    assert!(wait_until(LONG, || all_free(&cluster)), "reservations were not freed");
    let job = cluster.job(id);
    assert_eq!(job["state"]["status"], "Killed");
    // The freed nodes take new work.
    let next = cluster.submit(&["-n", "3", "-c", "2", "true"]);
    cluster.wait_status(next, "Completed", LONG);
}

fn the_time_limit_kills_the_job_as_timed_out(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 2, 2, 512);
    // A replica that ignores SIGTERM must still die, by SIGKILL after the grace period.
    let id = cluster.submit(&[
        "-n",
        "2",
        "-t",
        "0:01",
        "trap '' TERM; echo $$ > pid.$CM_PROC_RANK; while true; do sleep 0.1; done",
    ]);
    let pids = replica_pids(&cluster, 2);
    let job = cluster.wait_status(id, "TimedOut", LONG);
    assert!(pids.iter().all(|&p| !process_alive(p)), "replicas outlived the time limit");
    let elapsed = job["state"]["ended_at"].as_u64().expect("end") - job["state"]["started_at"].as_u64().expect("start");
    assert!((1000..10_000).contains(&elapsed), "ran {elapsed} ms for a 1 s limit (+1 s grace)");
    let out = cluster.tool("cmrun", &["--wait", "-t", "0:01", "sleep 30"]);
    assert_eq!(out.status.code(), Some(124), "--wait gives 124 for a timeout");
}

fn a_non_zero_exit_fails_the_job_with_its_code(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 2, 2, 512);
    let id = cluster.submit(&["-n", "2", "exit $((CM_NODE_RANK * 5))"]);
    let job = cluster.wait_status(id, "Failed", LONG);
    let mut codes = Vec::new();
    for node in job["nodes"].as_array().expect("nodes") {
        for replica in node["end"]["replicas"].as_array().expect("replicas") {
            codes.push((replica["rank"].as_u64().expect("rank"), replica["status"]["code"].as_i64().expect("code")));
        }
    }
    codes.sort();
    assert_eq!(codes, vec![(0, 0), (1, 5)], "every replica's exit code is recorded");
    assert!(job["state"]["reason"].as_str().expect("reason").contains("exit 5"), "{job}");
    let text = String::from_utf8_lossy(&cluster.tool("cminfo", &[&id.to_string()]).stdout).to_string();
    assert!(text.contains("Failed") && text.contains("1: exit 5"), "{text}");
}

fn cmrun_wait_returns_the_job_exit_code(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 1, 2, 512);
    let ok = cluster.tool("cmrun", &["--wait", "true"]);
    assert_eq!(ok.status.code(), Some(0));
    let failed = cluster.tool("cmrun", &["--wait", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7), "{}", String::from_utf8_lossy(&failed.stderr));
    let signaled = cluster.tool("cmrun", &["--wait", "kill -9 $$"]);
    assert_eq!(signaled.status.code(), Some(137));
}

fn a_restarted_head_keeps_pending_jobs_and_runs_them(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 1, 512);
    let running = cluster.submit(&["sleep 2"]);
    let pending = cluster.submit(&["echo ran > after-restart"]);
    cluster.wait_status(running, "Running", LONG);
    assert_eq!(cluster.job_status(pending), "Pending");
    let restarted = std::time::Instant::now();
    cluster.restart_head();
    assert!(wait_until(LONG, || cluster.tool("cminfo", &[]).status.success()));
    eprintln!("head serving again {} ms after kill -9 and restart", restarted.elapsed().as_millis());
    // The compute reports the first job's end to the new head, which then starts the pending one.
    cluster.wait_status(running, "Completed", LONG);
    cluster.wait_status(pending, "Completed", LONG);
    assert_eq!(read(cluster.workdir.join("after-restart")).trim(), "ran");
    let next = cluster.submit(&["true"]);
    assert_eq!(next, pending + 1, "ids continue after a restart");
    cluster.assert_alive();
}

fn replicas_run_as_the_submitting_user(store: StoreKind) {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: switching users needs the daemons to run as root");
        return;
    }
    let cluster = Cluster::start_on(&store, 1, 2, 512);
    // nobody's tools go over TCP: MUNGE vouches for nobody.
    let nobody = 65534;
    let home = cluster.workdir.join("nobody");
    std::fs::create_dir(&home).expect("dir");
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(nobody)), Some(nix::unistd::Gid::from_raw(nobody)))
        .expect("chown");
    std::fs::set_permissions(cluster.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // The build directory may not be reachable for nobody (CI keeps it under /root): run copies.
    let tools = cluster.dir.path().join("bin");
    std::fs::create_dir(&tools).expect("bin dir");
    let as_nobody = |name: &str, args: &[&str]| {
        let copy = tools.join(name);
        if !copy.exists() {
            std::fs::copy(cm_testkit::bin(name), &copy).expect("copy tool");
        }
        let mut command = std::process::Command::new(&copy);
        command.args(args).env("CM_HEAD", &cluster.head_endpoint).env("CM_CONFIG", &cluster.config).current_dir(&home);
        std::os::unix::process::CommandExt::uid(&mut command, nobody);
        std::os::unix::process::CommandExt::gid(&mut command, nobody);
        command
    };
    let out = output_when_not_busy(as_nobody("cmrun", &["--wait", "id -u; id -g"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    let id: u64 = lines[0].parse().expect("the id first");
    assert_eq!(lines[1..], ["65534", "65534"], "then the job's output, as --wait shows it");
    let file = home.join(format!("cmlogs/{id}/c1.0.out"));
    assert_eq!(read(file.clone()).split_whitespace().collect::<Vec<_>>(), ["65534", "65534"]);
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).expect("meta"));
    assert_eq!(owner, nobody, "output files belong to the user");
    assert_eq!(cluster.job(id)["spec"]["user"]["uid"], nobody);
    // Another user may not kill root's jobs.
    let roots = cluster.submit(&["sleep 300"]);
    let out = output_when_not_busy(as_nobody("cmkill", &[&roots.to_string()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its owner, root or an operator"));
    assert_eq!(cluster.job_status(roots), "Running");
}

fn tools_say_in_one_line_when_the_head_is_unreachable(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 1, 512);
    cluster.head.kill9();
    for over_tcp in [false, true] {
        if over_tcp {
            cluster.tools_over_tcp();
        }
        for (tool, args) in [("cminfo", &[][..]), ("cmrun", &["true"]), ("cmkill", &["1"])] {
            let out = cluster.tool(tool, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{tool}: {err}");
            assert!(err.contains("cannot reach the head"), "{tool}: {err}");
            assert_eq!(err.matches("://").count(), 1, "{tool} names the head's address once: {err}");
        }
    }
}

fn daemons_answer_direct_requests_and_survive_bad_input(store: StoreKind) {
    use cm_auth::credentials::{node_recipient, HEAD};
    use cm_auth::Credentials;
    use cm_common::protocol::*;
    use cm_common::{JobId, Resources};
    use cm_transport::{Requester, RetryPolicy};
    use std::io::Write;

    let mut cluster = Cluster::start_on(&store, 1, 2, 512);
    let compute = read(cluster.dir.path().join("c1/compute.endpoint"));
    let policy = RetryPolicy::new(Duration::from_secs(2), 0);
    let key = cluster.key();
    let sealed_for = |recipient: &str| Credentials::Sealed { key: key.clone(), recipient: recipient.to_string() };
    let connect =
        |endpoint: &str, credentials| Requester::new(endpoint, policy, "test", credentials).expect("endpoint");

    // Head -> compute requests, straight to the compute daemon, sealed as the head seals them.
    let mut node = connect(&compute, sealed_for(&node_recipient("c1")));
    match node.call::<_, NodeResponse>(&NodeRequest::GetNodeStatus(GetNodeStatus {})).expect("reply") {
        Ok(NodeResponse::NodeStatus(status)) => {
            assert_eq!(status.capacity, Resources::new(2, 512));
            assert!(status.running.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let host = |cpus| NodeRequest::HostJob(HostJob { job: JobId(99), per_node: Resources::new(cpus, 100), uid: 1000 });
    let can_host = |node: &mut Requester, cpus| match node.call::<_, NodeResponse>(&host(cpus)).expect("reply") {
        Ok(NodeResponse::CanHost(c)) => c.ok,
        other => panic!("{other:?}"),
    };
    assert!(can_host(&mut node, 2));
    assert!(!can_host(&mut node, 3));

    // Garbage, a foreign version, and an unknown action (sealed, so that it reaches the decoder):
    // error replies.
    for (endpoint, recipient) in
        [(cluster.head_endpoint.clone(), HEAD.to_string()), (compute.clone(), node_recipient("c1"))]
    {
        let mut peer = connect(&endpoint, Credentials::None);
        let code = |peer: &mut Requester, bytes: &[u8]| {
            let reply = peer.request_bytes(bytes).expect("an error reply, not silence");
            decode::<Reply<Ack>>(&reply).expect("a valid envelope").1.expect_err("an error").code
        };
        assert_eq!(code(&mut peer, b"\xde\xad\xbe\xef not msgpack"), ErrorCode::BadRequest);
        assert_eq!(code(&mut peer, b""), ErrorCode::BadRequest);
        let future = Envelope { version: 999, sender: "future".to_string(), auth: Auth::None, body: vec![1] };
        assert_eq!(code(&mut peer, &rmp_serde::to_vec_named(&future).expect("encode")), ErrorCode::VersionMismatch);
        let mut sealed = connect(&endpoint, sealed_for(&recipient));
        match sealed.call::<_, Ack>(&"Reboot").expect("a reply") {
            Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message),
            Ok(ack) => panic!("an unknown action was taken: {ack:?}"),
        }
    }
    let misdirected = NodeRequest::FreeResources(FreeResources { job: JobId(1), run: 0 });
    let mut head = connect(&cluster.head_endpoint, sealed_for(HEAD));
    assert_eq!(head.call::<_, Ack>(&misdirected).expect("reply").expect_err("error").code, ErrorCode::BadRequest);

    // Larger than max_message_size (2 MiB here): the head refuses it and hangs up, no reply comes.
    let oversized = vec![0x90u8; 4 << 20];
    let quick = RetryPolicy::new(Duration::from_millis(500), 0);
    let mut big = Requester::new(&cluster.head_endpoint, quick, "test", Credentials::None).expect("endpoint");
    assert!(big.request_bytes(&oversized).is_err(), "an oversized message must not be served");

    // Raw bytes on the TCP ports, not even ZeroMQ.
    for endpoint in [&cluster.head_endpoint, &compute] {
        let address = endpoint.trim_start_matches("tcp://");
        for junk in [&b"GET / HTTP/1.0\r\n\r\n"[..], &[0xffu8; 300], &[0u8; 7]] {
            if let Ok(mut stream) = std::net::TcpStream::connect(address) {
                let _ = stream.write_all(junk);
            }
        }
    }

    // Both daemons still serve: a job runs end to end.
    let id = cluster.submit(&["true"]);
    cluster.wait_status(id, "Completed", LONG);
    cluster.assert_alive();
}

fn a_head_killed_during_a_stream_of_submissions_loses_no_acknowledged_job(store: StoreKind) {
    use std::sync::{Arc, Mutex};
    let mut cluster = Cluster::start_on(&store, 2, 2, 512);
    let printed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let submitter = {
        let (printed, failures) = (printed.clone(), failures.clone());
        let commands: Vec<std::process::Command> =
            (0..50).map(|i| cluster.tool_command("cmrun", &["-a", &format!("s{i}"), "true"])).collect();
        std::thread::spawn(move || {
            for mut command in commands {
                let out = command.output().expect("cmrun");
                match String::from_utf8_lossy(&out.stdout).trim().parse::<u64>() {
                    Ok(id) if out.status.success() => printed.lock().expect("lock").push(id),
                    _ => failures.lock().expect("lock").push(String::from_utf8_lossy(&out.stderr).to_string()),
                }
            }
        })
    };
    assert!(wait_until(LONG, || printed.lock().expect("lock").len() >= 15), "submissions did not start");
    cluster.head.kill9();
    std::thread::sleep(Duration::from_millis(700));
    cluster.restart_head();
    submitter.join().expect("submitter");
    let printed = printed.lock().expect("lock").clone();
    let failures = failures.lock().expect("lock").clone();
    eprintln!("{} submissions acknowledged, {} refused while the head was down", printed.len(), failures.len());
    assert!(printed.len() >= 15, "printed {printed:?}");
    assert_eq!(printed.len() + failures.len(), 50);
    for failure in &failures {
        assert!(failure.starts_with("cmrun: cannot reach the head"), "a failed submit says why: {failure}");
    }
    assert!(printed.windows(2).all(|w| w[0] < w[1]), "ids are unique and increasing: {printed:?}");
    // Every printed id exists, and the queue drains.
    for &id in &printed {
        cluster.wait_status(id, "Completed", LONG);
    }
    cluster.assert_alive();
}

fn a_lost_node_ends_its_job_as_node_fail_or_requeues_it(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 3, 2, 512);
    let plain = cluster.submit(&["-n", "2", "echo $$ > a.$CM_NODENAME; exec sleep 300"]);
    let requeue = cluster.submit(&[
        "-n",
        "2",
        "--requeue",
        "[ \"$CM_RESTART_COUNT\" -gt 0 ] && exit 0; echo $$ > b.$CM_NODENAME; exec sleep 300",
    ]);
    cluster.wait_status(plain, "Running", LONG);
    cluster.wait_status(requeue, "Running", LONG);
    let (plain_nodes, requeue_nodes) = (job_nodes(&cluster, plain), job_nodes(&cluster, requeue));
    let victim = plain_nodes[0].clone();
    assert!(requeue_nodes.contains(&victim), "first fit puts both jobs on the same two nodes");
    let survivor = plain_nodes[1].clone();
    let pid_file = |prefix: &str, node: &str| cluster.workdir.join(format!("{prefix}.{node}"));
    // A shell creates each file before it writes the pid: wait for the pids themselves.
    let written =
        |prefix: &str, node: &str| std::fs::read_to_string(pid_file(prefix, node)).ok()?.trim().parse::<i32>().ok();
    assert!(wait_until(LONG, || ["a", "b"].iter().all(|p| plain_nodes.iter().all(|n| written(p, n).is_some()))));
    let pid = |prefix: &str, node: &str| -> i32 { written(prefix, node).expect("pid") };
    let orphans = [pid("a", &victim), pid("b", &victim)];
    let survivors = [pid("a", &survivor), pid("b", &survivor)];

    let index = cluster.computes.iter().position(|d| d.name == victim).expect("victim");
    let killed_at = std::time::Instant::now();
    cluster.computes[index].kill9();
    assert!(wait_until(LONG, || node_docs(&cluster)
        .iter()
        .any(|n| n["id"] == victim.as_str() && n["health"]["health"] == "Down")));
    eprintln!("node failure detected {} ms after kill -9 (heartbeat_timeout 3 s)", killed_at.elapsed().as_millis());

    let job = cluster.wait_status(plain, "NodeFail", LONG);
    assert!(job["state"]["reason"].as_str().expect("reason").contains(&victim), "{job}");
    assert!(
        wait_until(LONG, || survivors.iter().all(|&p| !process_alive(p))),
        "replicas on the surviving node were not killed"
    );
    let job = cluster.wait_status(requeue, "Completed", LONG);
    assert_eq!(job["run"], 1, "requeued once, same id: {job}");
    assert!(!job_nodes(&cluster, requeue).contains(&victim), "the second run avoided the lost node");
    // The head reports every reservation released on the live nodes.
    assert!(wait_until(LONG, || all_free(&cluster)));
    // The dead daemon's replicas were orphaned by the SIGKILL; a real lost node takes them along.
    for pid in orphans {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Submits a `--requeue` job whose first run takes its time to stop (longer than kill_grace, so it
/// ends by SIGKILL) and whose second runs `second`, on a one-node cluster; silences the node
/// past heartbeat_timeout, so the head declares it Down and requeues the job while the first run
/// goes on there; then lets it answer again. Back, the node is told to stop the first run and,
/// its only CPU free in the head's eyes, is given the second run at once. Returns the job and the
/// first run's pid.
fn requeue_onto_the_returning_node(cluster: &Cluster, second: &str) -> (u64, i32) {
    use nix::sys::signal::{kill, Signal};
    let script = format!(
        "if [ \"$CM_RESTART_COUNT\" -gt 0 ]; then {second}; fi; trap 'sleep 5' TERM; echo $$ > first; sleep 300 & wait"
    );
    let id = cluster.submit(&["--requeue", &script]);
    cluster.wait_status(id, "Running", LONG);
    // The shell creates the file before it writes the pid: wait for the pid itself.
    let first_pid = || std::fs::read_to_string(cluster.workdir.join("first")).ok()?.trim().parse::<i32>().ok();
    assert!(wait_until(LONG, || first_pid().is_some()), "the first run wrote no pid");
    let first = first_pid().expect("pid");
    let daemon = cluster.computes[0].pid().expect("the compute daemon runs");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    assert!(wait_until(LONG, || cluster.job(id)["run"] == 1), "requeued: {}", cluster.job(id));
    assert!(process_alive(first), "the first run goes on while its node is silent");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    (id, first)
}

fn a_requeued_job_placed_back_on_its_returning_node_waits_for_the_old_run_to_stop(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 1, 1, 512);
    let (id, first) = requeue_onto_the_returning_node(&cluster, "exit 0");
    let job = cluster.wait_status(id, "Completed", LONG);
    assert_eq!(job["run"], 1, "{job}");
    assert!(!process_alive(first), "the first run was stopped");
    assert!(wait_until(LONG, || all_free(&cluster)));
}

fn a_run_waiting_for_its_earlier_run_to_stop_can_be_killed_before_it_starts(store: StoreKind) {
    let cluster = Cluster::start_on(&store, 1, 1, 512);
    let (id, first) = requeue_onto_the_returning_node(&cluster, "echo $$ > second; exec sleep 300");
    // Placed again at once; the first run takes kill_grace (1 s) to stop, and the second waits.
    let job = cluster.wait_status(id, "Running", LONG);
    assert_eq!(job["run"], 1, "{job}");
    let out = cluster.tool("cmkill", &[&id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_status(id, "Killed", LONG);
    // The node's report of its end comes after the head's verdict.
    assert!(wait_until(LONG, || !cluster.job(id)["nodes"][0]["end"].is_null()), "{}", cluster.job(id));
    let job = cluster.job(id);
    assert_eq!(job["run"], 1, "{job}");
    assert_eq!(job["nodes"][0]["end"]["replicas"], serde_json::json!([]), "the second run never started: {job}");
    assert!(wait_until(LONG, || !process_alive(first)), "the first run was stopped");
    assert!(wait_until(LONG, || all_free(&cluster)));
    // Nothing starts it later either: the node remembers the run as over.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!cluster.workdir.join("second").exists(), "the killed run started after all");
}

fn jobs_outlive_a_compute_daemon_restart_and_their_exit_codes_are_reported(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 2, 512);
    let id = cluster.submit(&["-p", "2", "echo $$ > pid.$CM_PROC_RANK; sleep 2; exit $((CM_PROC_RANK + 3))"]);
    let pids = replica_pids(&cluster, 2);
    cluster.computes[0].kill9();
    assert!(pids.iter().all(|&p| process_alive(p)), "the job survives its daemon's crash");
    cluster.computes[0].start();
    let job = cluster.wait_status(id, "Failed", LONG);
    let mut codes: Vec<(u64, i64)> = job["nodes"][0]["end"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| (r["rank"].as_u64().expect("rank"), r["status"]["code"].as_i64().expect("code")))
        .collect();
    codes.sort();
    assert_eq!(codes, vec![(0, 3), (1, 4)], "exit codes reported by the restarted daemon");
    // A clean stop and start of the daemon, while a job runs, loses nothing either.
    let id = cluster.submit(&["sleep 1.5"]);
    cluster.wait_status(id, "Running", LONG);
    cluster.computes[0].terminate();
    cluster.computes[0].start();
    cluster.wait_status(id, "Completed", LONG);
    // The node is free and takes work again.
    let next = cluster.submit(&["-c", "2", "true"]);
    cluster.wait_status(next, "Completed", LONG);
    cluster.assert_alive();
}

/// The pid of the `cmstep --launcher` that the daemon `parent` started.
fn launcher_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == parent && cmdline.ends_with(b"--launcher\0")).then_some(pid)
    })
}

fn jobs_outlive_their_supervisor_launcher_and_a_new_one_takes_over(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 2, 512);
    let id = cluster.submit(&["-p", "2", "echo $$ > pid.$CM_PROC_RANK; sleep 1; exit 5"]);
    let pids = replica_pids(&cluster, 2);
    let daemon = cluster.computes[0].pid().expect("the compute daemon runs");
    let launcher = launcher_of(daemon).expect("the compute daemon's supervisor launcher");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher), nix::sys::signal::Signal::SIGKILL).expect("kill");
    assert!(pids.iter().all(|&p| process_alive(p)), "the job survives its launcher");
    // Nobody reports the orphaned supervisor's exit now: the daemon sees its step file unlocked.
    let job = cluster.wait_status(id, "Failed", LONG);
    let codes: Vec<i64> = job["nodes"][0]["end"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["status"]["code"].as_i64().expect("code"))
        .collect();
    assert_eq!(codes, vec![5, 5]);
    let next = cluster.submit(&["-c", "2", "true"]);
    cluster.wait_status(next, "Completed", LONG);
    assert!(launcher_of(daemon).is_some_and(|pid| pid != launcher), "a new launcher serves the node");
    cluster.assert_alive();
}

fn a_silent_node_stalls_nobody_else(store: StoreKind) {
    use nix::sys::signal::{kill, Signal};
    let cluster = Cluster::start_on(&store, 2, 1, 512);
    let stuck = cluster.submit(&["sleep 300"]);
    let job = cluster.wait_status(stuck, "Running", LONG);
    let frozen = job["nodes"][0]["node"].as_str().expect("node").to_string();
    let daemon = cluster.computes.iter().find(|d| d.name == frozen).expect("daemon");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.pid().expect("pid")).expect("pid"));
    // Connected but silent: every request to it times out.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        let out = cluster.tool(args[0], &args[1..]);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (started.elapsed(), out)
    };
    // Killing its job needs a message to the silent node; the head must not wait for it.
    let (took, _) = timed(&["cmkill", &stuck.to_string()]);
    assert!(took < Duration::from_secs(1), "cmkill took {took:?}");
    let (took, _) = timed(&["cminfo"]);
    assert!(took < Duration::from_secs(1), "cminfo took {took:?}");
    let (took, _) = timed(&["cmrun", "--wait", "true"]);
    assert!(took < Duration::from_secs(2), "a job on the other node took {took:?}");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    // Once it answers again it gets the kill, and its CPU comes back.
    cluster.wait_status(stuck, "Killed", LONG);
    assert!(wait_until(LONG, || all_free(&cluster)));
}

/// Runs each case once per store: `embedded::CASE` and `mongodb::CASE`.
/// Tools on the head's host can reach it over its Unix socket (`head_socket`), which every local
/// user may open; a head killed and restarted replaces the socket file it left behind. Not a
/// matter of the store, so this runs once.
#[test]
fn tools_reach_the_head_over_its_unix_socket_also_after_a_head_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::start(1, 1, 512);
    cluster.tools_over_socket();
    let socket = cluster.dir.path().join("head.sock");
    let mode = std::fs::metadata(&socket).expect("the head's socket file").permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "socket mode {mode:o}");
    let blocker = cluster.submit(&["sleep 300"]);
    let id = cluster.submit(&["echo over the socket"]);
    cluster.wait_status(blocker, "Running", LONG);
    let out = cluster.tool("cmkill", &[&blocker.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_status(id, "Completed", LONG);
    assert_eq!(read(cluster.workdir.join(format!("cmlogs/{id}/c1.0.out"))), "over the socket\n");

    cluster.restart_head();
    assert!(wait_until(LONG, || cluster.info().is_some()), "no answer over the socket after a restart");
    let next = cluster.submit(&["true"]);
    cluster.wait_status(next, "Completed", LONG);
}

/// A tool whose caller left its standard output closed opens /dev/null in its place (as Rust's
/// runtime does, which the tools skip), so its connection to the head never takes descriptor 1
/// and what it prints never lands in the protocol. `cmrun --wait` prints the id and then asks
/// again over the same connection. Not a matter of the store, so this runs once.
#[test]
fn tools_started_with_stdout_closed_keep_their_connection_clean() {
    let cluster = Cluster::start(1, 1, 512);
    let closing_stdout = |tool: &str, args: &str| {
        let script = format!("exec \"$0\" {args} >&-");
        std::process::Command::new("sh")
            .args(["-c", &script, &cm_testkit::bin(tool).to_string_lossy()])
            .current_dir(&cluster.workdir)
            .env("CM_HEAD", &cluster.head_endpoint)
            .env("CM_CONFIG", &cluster.config)
            .output()
            .expect("run a tool through sh")
    };
    let out = closing_stdout("cmrun", "--wait sh -c 'exit 3'");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let out = closing_stdout("cminfo", "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

cm_testkit::on_both_stores!(
    a_two_node_two_process_job_writes_four_outputs_with_ranks_and_node_list,
    a_job_larger_than_the_cluster_is_refused_at_submit_time,
    a_job_that_must_wait_starts_when_resources_free,
    cmkill_removes_a_pending_job_for_good,
    cmkill_of_a_running_job_kills_every_replica_on_every_node_and_frees_them,
    the_time_limit_kills_the_job_as_timed_out,
    a_non_zero_exit_fails_the_job_with_its_code,
    cmrun_wait_returns_the_job_exit_code,
    a_restarted_head_keeps_pending_jobs_and_runs_them,
    replicas_run_as_the_submitting_user,
    tools_say_in_one_line_when_the_head_is_unreachable,
    daemons_answer_direct_requests_and_survive_bad_input,
    a_head_killed_during_a_stream_of_submissions_loses_no_acknowledged_job,
    a_lost_node_ends_its_job_as_node_fail_or_requeues_it,
    a_requeued_job_placed_back_on_its_returning_node_waits_for_the_old_run_to_stop,
    a_run_waiting_for_its_earlier_run_to_stop_can_be_killed_before_it_starts,
    jobs_outlive_a_compute_daemon_restart_and_their_exit_codes_are_reported,
    jobs_outlive_their_supervisor_launcher_and_a_new_one_takes_over,
    a_silent_node_stalls_nobody_else
);
