//! cm's ZMTP peers against libzmq itself, through pyzmq: a libzmq REQ socket asks cm's
//! [`Responder`], and cm's [`Requester`] asks a libzmq REP socket, over TCP and a Unix socket.
//! cm has no libzmq of its own, so this is what keeps it a ZeroMQ peer that anything speaking
//! ZeroMQ can talk to. Needs `python3` with pyzmq (`.ci/run` installs it); without it the tests
//! skip with a printed reason, except under CI (`CI` set), where that fails.

use cm_auth::Credentials;
use cm_transport::{Incoming, Requester, Responder, RetryPolicy};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// pyzmq's libzmq version, or `None` (the test is skipped, with the reason printed) where there is
/// no pyzmq outside CI.
fn libzmq() -> Option<String> {
    let probe = Command::new("python3").args(["-c", "import zmq; print(zmq.zmq_version())"]).output();
    let why = match probe {
        Ok(out) if out.status.success() => return Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or_default().to_string(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("the libzmq interoperability tests must run in CI, but pyzmq is missing: {why}");
    }
    eprintln!("SKIPPED: no pyzmq for the libzmq interoperability tests ({why}); pip install pyzmq");
    None
}

const CLIENT: &str = r#"
import sys, zmq
ctx = zmq.Context()
for endpoint in sys.argv[1:]:
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send(b"hi")
    assert s.recv() == b"echo:hi", endpoint
    big = bytes(range(256)) * 1200
    s.send(big)
    assert s.recv() == b"echo:" + big, endpoint
    s.send_multipart([b"a", b"b"])
    assert s.recv() == b"malformed: a request must be one frame, got 2", endpoint
    s.close()
print("ok")
"#;

#[test]
fn a_libzmq_req_socket_is_answered_over_tcp_and_a_unix_socket() {
    let Some(version) = libzmq() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
    let unix = server.listen_on_unix_socket(&dir.path().join("head.sock")).expect("unix socket");
    let tcp = server.endpoint().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            server.serve(&stop, |incoming| match incoming {
                Incoming::Message(m) => [b"echo:".as_slice(), &m].concat(),
                Incoming::Malformed(why) => format!("malformed: {why}").into_bytes(),
            })
        })
    };
    let out = Command::new("python3").args(["-c", CLIENT, &tcp, &unix]).output().expect("python3");
    stop.store(true, Ordering::Relaxed);
    serving.join().expect("join").expect("serve");
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "libzmq {version} as REQ: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVER: &str = r#"
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.REP)
s.setsockopt(zmq.LINGER, 0)
if sys.argv[1] == "tcp":
    s.bind("tcp://127.0.0.1:*")
else:
    s.bind("ipc://" + sys.argv[1])
print(s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
for _ in range(3):
    s.send(b"echo:" + s.recv())
"#;

#[test]
fn a_libzmq_rep_socket_answers_cms_requester_over_tcp_and_a_unix_socket() {
    let Some(version) = libzmq() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rep.sock");
    for how in ["tcp", path.to_str().expect("utf-8")] {
        let mut child =
            Command::new("python3").args(["-c", SERVER, how]).stdout(Stdio::piped()).spawn().expect("python3");
        let mut endpoint = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut endpoint).expect("endpoint");
        let endpoint = endpoint.trim();
        assert!(!endpoint.is_empty(), "the libzmq {version} REP did not start");
        let policy = RetryPolicy::new(Duration::from_secs(10), 0);
        let mut client = Requester::new(endpoint, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"hi").expect("reply"), b"echo:hi", "libzmq {version} at {endpoint}");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let reply = client.request_bytes(&big).expect("reply");
        assert!(reply.starts_with(b"echo:") && reply[5..] == big[..], "libzmq {version} at {endpoint}");
        assert_eq!(client.request_bytes(b"").expect("reply"), b"echo:");
        assert!(child.wait().expect("wait").success(), "libzmq {version} at {endpoint}");
    }
}
