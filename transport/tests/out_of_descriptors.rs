//! A responder that runs out of file descriptors takes the connections left waiting once some are
//! free again, without another connection arriving to wake it. Alone in its own test binary: it
//! lowers the process's descriptor limit.

use cm_transport::{zmtp, Incoming, Responder};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Opens `/dev/null` until the process has no descriptor left, and returns the files.
fn use_up_descriptors() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => return files,
            Err(e) => panic!("cannot open /dev/null: {e}"),
        }
    }
}

#[test]
fn connections_left_waiting_for_descriptors_are_taken_later() {
    let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
    let endpoint = server.endpoint().trim_start_matches("tcp://").to_string();

    // A REQ peer, connected and with its request sent, waiting in the listener's backlog.
    let mut client = TcpStream::connect(&endpoint).expect("connect");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut hello = zmtp::greeting().to_vec();
    zmtp::push_ready(&mut hello, "REQ");
    zmtp::push_frame(&mut hello, zmtp::MORE, &[]);
    zmtp::push_frame(&mut hello, 0, b"ping");
    client.write_all(&hello).expect("send");

    // A limit a little above what is open now (descriptors are numbered from the lowest free
    // one), then none left for the server.
    let open = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count() as u64;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, (open + 32).min(hard), hard).expect("setrlimit");
    let filler = use_up_descriptors();
    assert!(!filler.is_empty(), "no descriptor was free to use up");
    server.wait(None, Duration::from_millis(300)).expect("wait");
    assert!(server.try_recv().expect("recv").is_none(), "accepted with no descriptor free");

    // Descriptors free again; nothing else connects.
    drop(filler);
    let deadline = Instant::now() + Duration::from_secs(5);
    let request = loop {
        server.wait(None, Duration::from_millis(50)).expect("wait");
        if let Some(request) = server.try_recv().expect("recv") {
            break request;
        }
        assert!(Instant::now() < deadline, "the waiting connection was never taken");
    };
    match request {
        Incoming::Message(body) => assert_eq!(body, b"ping"),
        Incoming::Malformed(why) => panic!("malformed: {why}"),
    }
    server.send(b"pong");

    // The reply: the REP's greeting and READY, the empty delimiter, then "pong".
    let mut received = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk) {
            Ok(0) => panic!("the server hung up"),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        }
        frames.clear();
        let mut at = zmtp::GREETING.min(received.len());
        while let Some(frame) = zmtp::parse_frame(&received[at..], u64::MAX).expect("a frame") {
            frames.push(received[at + frame.body.start..at + frame.body.end].to_vec());
            at += frame.body.end;
        }
    }
    assert_eq!(frames[1], b"");
    assert_eq!(frames[2], b"pong");
}
