//! Limits against real daemons: jobs too large for the configured limits are refused at
//! submission with the limit named, the queue takes no more than its limits, a job that only a
//! lost node could hold does not hold up the queue, and `cminfo` shows what users wrote without
//! letting it drive the terminal. The head keeps serving throughout.

use cm_testkit::{wait_until, Cluster, StoreKind, TEST_CONFIG};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn refused(cluster: &Cluster, args: &[&str], env: &[(&str, String)]) -> String {
    let mut command = cluster.tool_command("cmrun", args);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("cmrun");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "cmrun {args:?} was taken: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn jobs_over_a_limit_are_refused_at_submission_naming_it() {
    let cluster = Cluster::start(1, 2, 512);
    let err = refused(&cluster, &["-p", "100000", "-c", "1", "true"], &[]);
    assert!(err.contains("limits.max_procs_per_cpu"), "{err}");
    // One argument or variable may hold at most 128 KiB (the kernel's MAX_ARG_STRLEN): several.
    let word = "x".repeat(100 * 1024);
    let err = refused(&cluster, &[&word, &word, &word], &[]);
    assert!(err.contains("limits.max_command_bytes"), "{err}");
    let big: Vec<(String, String)> = (0..10).map(|i| (format!("BIG{i}"), "v".repeat(110 * 1024))).collect();
    let big: Vec<(&str, String)> = big.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let err = refused(&cluster, &["true"], &big);
    assert!(err.contains("limits.max_env_bytes"), "{err}");
    let err = refused(&cluster, &["-a", &"n".repeat(300), "true"], &[]);
    assert!(err.contains("limits.max_name_bytes"), "{err}");
    let err = refused(&cluster, &["-a", "evil\u{202e}txt", "true"], &[]);
    assert!(err.contains("text-direction"), "{err}");
    let info = cluster.info().expect("cminfo answers");
    assert_eq!(info["jobs"].as_array().map_or(0, Vec::len), 0, "nothing was queued");
    let id = cluster.submit(&["-p", "128", "-c", "1", "true"]);
    cluster.wait_status(id, "Completed", LONG);
}

#[test]
fn the_queue_takes_no_more_than_a_users_limit() {
    let config = format!("{TEST_CONFIG}limits:\n  max_jobs_per_user: 3\n");
    let cluster = Cluster::start_with(&StoreKind::Embedded, 1, 1, 512, &config, "info");
    let jobs: Vec<u64> = (0..3).map(|_| cluster.submit(&["sleep 30"])).collect();
    let err = refused(&cluster, &["true"], &[]);
    assert!(err.contains("limits.max_jobs_per_user"), "{err}");
    let out = cluster.tool("cmkill", &[&jobs[2].to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.submit(&["true"]);
}

#[test]
fn a_job_that_only_a_lost_node_could_hold_does_not_hold_up_the_queue() {
    let mut cluster = Cluster::start(0, 1, 512);
    cluster.add_compute("small", 1, 512);
    cluster.add_compute("big", 4, 512);
    cluster.wait_for_nodes(2);
    let running = cluster.submit(&["-c", "4", "sleep 60"]);
    // Started on big for real (its start reported), not only placed there.
    let started = wait_until(LONG, || !cluster.job(running)["nodes"][0]["started_at"].is_null());
    assert!(started, "job {running} did not start on big");
    let waiting = cluster.submit(&["-c", "4", "true"]);
    // The big node is lost: the waiting job has no live node that could ever hold it.
    let big = cluster.computes.iter_mut().find(|d| d.name == "big").expect("big");
    big.kill9();
    cluster.wait_status(running, "NodeFail", LONG);
    let small = cluster.submit(&["-c", "1", "true"]);
    cluster.wait_status(small, "Completed", LONG);
    assert_eq!(cluster.job_status(waiting), "Pending");
    let err = refused(&cluster, &["-c", "4", "true"], &[]);
    assert!(err.contains("(1 down)"), "{err}");
}

#[test]
fn cminfo_shows_what_users_wrote_without_letting_it_drive_the_terminal() {
    let cluster = Cluster::start(1, 2, 512);
    let id = cluster.submit(&["-a", "title", "true # \u{1b}]0;pwned\u{7}\u{1b}[2J \u{9b}31m"]);
    cluster.wait_status(id, "Completed", LONG);
    let id_text = id.to_string();
    for args in [vec!["--all"], vec![id_text.as_str()], vec!["--json", "--all"]] {
        let out = cluster.tool("cminfo", &args);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let raw = text.chars().find(|&c| c.is_control() && c != '\n');
        assert_eq!(raw, None, "cminfo {args:?} printed a raw control character: {text}");
    }
    assert!(wait_until(LONG, || cluster.info().is_some()));
}

/// A raw ZeroMQ peer on the head's TCP port that greets as REQ and sends `bytes`.
fn raw_peer(cluster: &Cluster, bytes: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(cluster.head_endpoint.trim_start_matches("tcp://")).expect("connect");
    let mut hello = cm_transport::zmtp::greeting().to_vec();
    cm_transport::zmtp::push_ready(&mut hello, "REQ");
    hello.extend_from_slice(bytes);
    let _ = stream.write_all(&hello);
    stream
}

/// Whether the head closed `stream` (it reads the end within a second, past the head's greeting).
fn closed(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn peers_cannot_fill_the_heads_memory_or_descriptors_and_the_head_serves_on() {
    // max_message_size is 2 MiB here: connections together may hold 8 MiB of arriving messages.
    let cluster = Cluster::start(1, 1, 512);
    let mut frames = Vec::new();
    cm_transport::zmtp::push_frame(&mut frames, cm_transport::zmtp::MORE, &[]);
    cm_transport::zmtp::push_frame(&mut frames, 0, &vec![7u8; (2 << 20) - 100]);
    let mut slow: Vec<_> = (0..10).map(|_| raw_peer(&cluster, &frames[..(2 << 20) - 4096])).collect();
    assert!(cluster.info().is_some(), "cminfo answers while they send");
    let dropped = slow.iter_mut().map(closed).filter(|gone| *gone).count();
    assert!(dropped >= 5, "only {dropped} of 10 huge partial messages were refused");
    // Hundreds of idle connections from one host: the head keeps 256 and serves on.
    let idle: Vec<_> = (0..300).map(|_| raw_peer(&cluster, &[])).collect();
    assert!(cluster.info().is_some(), "cminfo answers with 300 idle connections open");
    let id = cluster.submit(&["true"]);
    cluster.wait_status(id, "Completed", LONG);
    drop(idle);
}
