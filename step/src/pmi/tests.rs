//! The server against ranks played by sockets in the test, and a daemon played by a listener.

use super::*;
use cm_common::JobId;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;

fn server(nodes: usize, node_rank: usize, procs: u32, relay: Option<PathBuf>) -> (Pmi, Vec<BufReader<UnixStream>>) {
    let setup = PmiSetup { run: JobRun { job: JobId(7), run: 0 }, node_rank, nodes, procs_per_node: procs, relay };
    let (pmi, theirs) = Pmi::new(setup).expect("socket pairs");
    let ranks = theirs
        .into_iter()
        .map(|fd| {
            let stream = UnixStream::from(fd);
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            BufReader::new(stream)
        })
        .collect();
    (pmi, ranks)
}

fn send(rank: &mut BufReader<UnixStream>, line: &str) {
    rank.get_mut().write_all(format!("{line}\n").as_bytes()).expect("send");
}

fn receive(rank: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    rank.read_line(&mut line).expect("a reply");
    line.trim_end().to_string()
}

/// Sends a line, lets the server answer, and returns the reply.
fn ask(pmi: &mut Pmi, rank: &mut BufReader<UnixStream>, line: &str) -> String {
    send(rank, line);
    assert_eq!(pmi.pump(Instant::now()), None);
    receive(rank)
}

fn pending(rank: &mut BufReader<UnixStream>) -> bool {
    use nix::poll::{poll, PollFd, PollTimeout};
    if !rank.buffer().is_empty() {
        return true;
    }
    let mut fds = [PollFd::new(rank.get_ref().as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).expect("poll") > 0
}

fn init(pmi: &mut Pmi, rank: &mut BufReader<UnixStream>) {
    assert_eq!(
        ask(pmi, rank, "cmd=init pmi_version=1 pmi_subversion=1"),
        "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0"
    );
}

#[test]
fn ranks_on_one_node_exchange_what_they_put_at_a_fence() {
    let (mut pmi, mut ranks) = server(1, 0, 2, None);
    assert_eq!(pmi.size(), 2);
    for rank in &mut ranks {
        init(&mut pmi, rank);
    }
    let r = &mut ranks[0];
    assert_eq!(ask(&mut pmi, r, "cmd=get_maxes"), "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024");
    assert_eq!(ask(&mut pmi, r, "cmd=get_appnum"), "cmd=appnum appnum=0");
    assert_eq!(ask(&mut pmi, r, "cmd=get_my_kvsname"), "cmd=my_kvsname kvsname=kvs_7_0");
    assert_eq!(ask(&mut pmi, r, "cmd=get_universe_size"), "cmd=universe_size size=2");
    assert_eq!(
        ask(&mut pmi, r, "cmd=get kvsname=kvs_7_0 key=PMI_process_mapping"),
        "cmd=get_result rc=0 msg=success value=(vector,(0,1,2))"
    );
    assert_eq!(ask(&mut pmi, r, "cmd=put kvsname=kvs_7_0 key=card-0 value=abc"), "cmd=put_result rc=0 msg=success");
    assert_eq!(ask(&mut pmi, r, "cmd=put kvsname=other key=card-0 value=abc"), "cmd=put_result rc=-1 msg=no_such_kvs");

    // The fence holds the first rank until the second arrives.
    send(&mut ranks[0], "cmd=barrier_in");
    assert_eq!(pmi.pump(Instant::now()), None);
    assert!(!pending(&mut ranks[0]));
    send(&mut ranks[1], "cmd=barrier_in");
    assert_eq!(pmi.pump(Instant::now()), None);
    for rank in &mut ranks {
        assert_eq!(receive(rank), "cmd=barrier_out");
    }
    assert_eq!(
        ask(&mut pmi, &mut ranks[1], "cmd=get kvsname=kvs_7_0 key=card-0"),
        "cmd=get_result rc=0 msg=success value=abc"
    );
    assert_eq!(
        ask(&mut pmi, &mut ranks[1], "cmd=get kvsname=kvs_7_0 key=missing"),
        "cmd=get_result rc=-1 msg=key_not_found"
    );
    for rank in &mut ranks {
        assert_eq!(ask(&mut pmi, rank, "cmd=finalize"), "cmd=finalize_ack");
    }
    // Closing after finalize is the normal end.
    drop(ranks);
    assert_eq!(pmi.pump(Instant::now()), None);
}

#[test]
fn a_program_that_never_speaks_pmi_is_left_alone() {
    let (mut pmi, ranks) = server(1, 0, 2, None);
    drop(ranks);
    assert_eq!(pmi.pump(Instant::now()), None);
    assert!(pmi.poll_fds().is_empty());
}

#[test]
fn abort_a_crash_mid_mpi_and_bad_lines_end_the_job_with_a_reason() {
    let (mut pmi, mut ranks) = server(2, 1, 2, None);
    init(&mut pmi, &mut ranks[0]);
    send(&mut ranks[0], "cmd=abort exitcode=3");
    assert_eq!(pmi.pump(Instant::now()).as_deref(), Some("rank 2 called MPI_Abort (error code 3)"));
    assert_eq!(pmi.pump(Instant::now()), None, "said once");

    let (mut pmi, mut ranks) = server(1, 0, 2, None);
    init(&mut pmi, &mut ranks[1]);
    ranks.truncate(1);
    assert_eq!(
        pmi.pump(Instant::now()).as_deref(),
        Some("rank 1 ended before MPI_Finalize (it exited or crashed; see its output)")
    );

    let (mut pmi, mut ranks) = server(1, 0, 1, None);
    send(&mut ranks[0], "cmd=format_disk");
    assert_eq!(pmi.pump(Instant::now()).as_deref(), Some("rank 0 sent PMI a bad line: unknown command `format_disk`"));

    let (mut pmi, mut ranks) = server(1, 0, 1, None);
    ranks[0].get_mut().write_all(&[b'x'; 2000]).expect("send");
    assert_eq!(pmi.pump(Instant::now()).as_deref(), Some("rank 0 sent PMI a line over 1024 bytes"));
}

#[test]
fn spawning_and_name_publishing_are_refused_in_the_reply_the_client_expects() {
    let (mut pmi, mut ranks) = server(1, 0, 1, None);
    init(&mut pmi, &mut ranks[0]);
    send(&mut ranks[0], "mcmd=spawn");
    send(&mut ranks[0], "nprocs=2");
    send(&mut ranks[0], "execname=/bin/true");
    assert_eq!(ask(&mut pmi, &mut ranks[0], "endcmd"), "cmd=spawn_result rc=-1 msg=not_supported_by_cm");
    assert_eq!(
        ask(&mut pmi, &mut ranks[0], "cmd=publish_name service=s port=p"),
        "cmd=publish_result rc=-1 msg=not_supported_by_cm"
    );
}

#[test]
fn a_full_key_value_space_refuses_more_puts() {
    let (mut pmi, mut ranks) = server(1, 0, 1, None);
    init(&mut pmi, &mut ranks[0]);
    let value = "v".repeat(600);
    let fits = MAX_KVS_BYTES / pair_bytes("k000000", &value);
    for i in 0..fits {
        let reply = ask(&mut pmi, &mut ranks[0], &format!("cmd=put kvsname=kvs_7_0 key=k{i:06} value={value}"));
        assert_eq!(reply, "cmd=put_result rc=0 msg=success", "put {i}");
    }
    let over = ask(&mut pmi, &mut ranks[0], &format!("cmd=put kvsname=kvs_7_0 key=k{fits:06} value={value}"));
    assert_eq!(over, "cmd=put_result rc=-1 msg=the_job's_key-value_space_is_full");
    // Replacing a value does not count twice.
    let again = ask(&mut pmi, &mut ranks[0], &format!("cmd=put kvsname=kvs_7_0 key=k000000 value={value}"));
    assert_eq!(again, "cmd=put_result rc=0 msg=success");
}

/// Plays the daemon: takes one fence and answers it.
fn daemon_fence(listener: &UnixListener, pmi: &mut Pmi, answer: impl FnOnce(FenceIn) -> Option<FenceOut>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    listener.set_nonblocking(true).expect("nonblocking");
    let mut stream = loop {
        assert_eq!(pmi.pump(Instant::now()), None);
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no fence came: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    // The request may still be queued on the server's side.
    let reader = std::thread::spawn({
        let mut stream = stream.try_clone().expect("clone");
        move || relay::read_frame::<FenceIn>(&mut stream)
    });
    while !reader.is_finished() {
        assert_eq!(pmi.pump(Instant::now()), None);
        std::thread::sleep(Duration::from_millis(1));
    }
    let request = reader.join().expect("reader").expect("a fence");
    match answer(request) {
        Some(out) => relay::write_frame(&mut stream, &out).expect("answer"),
        None => drop(stream),
    }
}

#[test]
fn a_fence_across_nodes_goes_through_the_daemon_and_brings_the_other_nodes_puts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(relay::SOCKET);
    let listener = UnixListener::bind(&path).expect("bind");
    let (mut pmi, mut ranks) = server(2, 0, 1, Some(path));
    init(&mut pmi, &mut ranks[0]);
    assert_eq!(
        ask(&mut pmi, &mut ranks[0], "cmd=put kvsname=kvs_7_0 key=card-0 value=zero"),
        "cmd=put_result rc=0 msg=success"
    );
    send(&mut ranks[0], "cmd=barrier_in");

    // The daemon goes away once mid-fence: the server asks again after a while.
    daemon_fence(&listener, &mut pmi, |_| None);
    assert_eq!(pmi.pump(Instant::now()), None);
    assert!(pmi.next_deadline().is_some(), "a retry is planned");
    assert_eq!(pmi.pump(Instant::now() + RELAY_RETRY), None);

    daemon_fence(&listener, &mut pmi, |request| {
        assert_eq!(request.run, JobRun { job: JobId(7), run: 0 });
        assert_eq!(request.epoch, 0);
        assert_eq!(request.puts, vec![("card-0".to_string(), "zero".to_string())]);
        let kvs = vec![("card-0".into(), "zero".into()), ("card-1".into(), "one".into())];
        Some(FenceOut::Done { epoch: 0, kvs })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pending(&mut ranks[0]) && Instant::now() < deadline {
        assert_eq!(pmi.pump(Instant::now()), None);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(receive(&mut ranks[0]), "cmd=barrier_out");
    assert_eq!(
        ask(&mut pmi, &mut ranks[0], "cmd=get kvsname=kvs_7_0 key=card-1"),
        "cmd=get_result rc=0 msg=success value=one"
    );

    // The next fence carries only what was put since, and a refusal ends the job.
    send(&mut ranks[0], "cmd=barrier_in");
    daemon_fence(&listener, &mut pmi, |request| {
        assert_eq!(request.epoch, 1);
        assert!(request.puts.is_empty());
        Some(FenceOut::Refused { reason: "the head refused".into() })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        if let Some(reason) = pmi.pump(Instant::now()) {
            break reason;
        }
        assert!(Instant::now() < deadline, "no refusal");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(reason, "the head refused");
}
