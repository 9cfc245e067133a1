//! [`Requester`]: a ZeroMQ REQ peer without libzmq, for every part of cm that asks: the tools,
//! a compute daemon's link to its head, and the head's sender to each compute node. It speaks
//! ZMTP 3.0 (<https://rfc.zeromq.org/spec/23/>) with the NULL mechanism, as a libzmq REQ socket
//! does, over one blocking TCP or Unix socket, in the calling thread, and keeps the connection
//! between requests.
//!
//! Why not libzmq here: libzmq hands every message between the caller's thread and its own I/O
//! thread, a wake-up on each side of each crossing, and a tool that makes a request or two and
//! exits also pays for starting and stopping those threads. On the 2-core benchmark machine, a
//! process that sent one request to an echo server through libzmq took 1.04–1.22 ms of CPU and 8
//! context switches; through this client, 0.74–0.84 ms and 3–4 (`cmbench-floor`). The native
//! Rust implementation of ZeroMQ (the `zeromq` crate) runs a reactor thread too: 0.99–1.04 ms
//! and 8. The daemons' senders already run in threads of their own that
//! wait for each reply, so they lose nothing by blocking; moving them off libzmq took a short job
//! about 0.09 ms less of the daemons' CPU and raised `cmbench` scenario 2 by 5–12 %. The daemons
//! answer on [`crate::Responder`], which speaks the same protocol without libzmq too; the tests in
//! `tests/libzmq_interop.rs` check both against libzmq itself.
//!
//! On a fresh connection we send our greeting (ZMTP 3.0, NULL, client) and a READY command naming
//! our socket type (REQ), and read the peer's greeting and READY (it must be a REP or ROUTER
//! socket). Then each request goes out as a REQ socket frames it, an empty delimiter frame and one
//! body frame, and its reply must come back the same way: the delimiter and exactly one body
//! frame. Other commands are skipped; an ERROR command ends the exchange. The whole attempt,
//! connecting included, keeps the policy's deadline; a peer that is not listening yet is tried
//! again every 100 ms until then, as libzmq reconnects.

use crate::zmtp::{self, COMMAND, GREETING, MORE};
use crate::{tcp_endpoint, RetryPolicy};
use cm_auth::credentials::Opened;
use cm_auth::Credentials;
use cm_common::protocol::{self, ErrorCode, ErrorReply, Reply};
use cm_common::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often an attempt tries again to connect to a peer that is not listening (libzmq's default
/// reconnect interval).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The most a reply may hold, all frames together. A larger size is a peer that speaks something
/// else, not a reply to make room for.
const MAX_REPLY: u64 = 1 << 30;

/// A REQ client for one peer that speaks ZMTP itself; see the module's documentation.
pub struct Requester {
    endpoint: String,
    peer: Peer,
    connection: Option<Connection>,
    policy: RetryPolicy,
    sender: String,
    credentials: Credentials,
}

/// Where the peer listens.
enum Peer {
    /// `HOST:PORT`, resolved on each connect.
    Tcp(String),
    Unix(PathBuf),
}

/// Why an attempt failed: a failure of the connection, which another attempt may not meet, or
/// one that another attempt would meet again (a name that does not resolve, a peer that does not
/// speak the protocol), which ends the request at once.
enum Failure {
    Io(io::Error),
    Fatal(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl Requester {
    /// A requester for `address`: `tcp://HOST:PORT`, `ipc://PATH`, or `HOST:PORT`. It connects on
    /// its first request.
    pub fn new(address: &str, policy: RetryPolicy, sender: &str, credentials: Credentials) -> Result<Self> {
        let endpoint = tcp_endpoint(address);
        let peer = if let Some(host_port) = endpoint.strip_prefix("tcp://") {
            Peer::Tcp(host_port.to_string())
        } else if let Some(path) = endpoint.strip_prefix("ipc://") {
            Peer::Unix(PathBuf::from(path))
        } else {
            return Err(Error::InvalidSetting(format!(
                "cannot reach {endpoint}: use HOST:PORT, tcp://HOST:PORT or ipc://PATH"
            )));
        };
        Ok(Requester { endpoint, peer, connection: None, policy, sender: sender.to_string(), credentials })
    }

    /// Speaks as `sender` from now on: a load generator that plays many nodes on one connection.
    pub fn set_sender(&mut self, sender: &str) {
        self.sender = sender.to_string();
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `body` with this requester's credentials and decodes the reply; transport, decoding
    /// and authentication failures are the outer error, the peer's error reply the inner one.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(&mut self, body: &Req) -> Result<Reply<Resp>> {
        let body = protocol::encode_body(body)?;
        let credentials = self.credentials.clone();
        let sender = self.sender.clone();
        // Each attempt is a new message with a credential of its own, so none is a replay.
        let (reply, check) =
            self.exchange(|| credentials.request(&sender, &body).map_err(|e| Error::Auth(e.to_string())))?;
        let envelope = protocol::decode_envelope(&reply)?;
        match check.open(envelope).map_err(|e| Error::Auth(format!("{}: {e}", self.endpoint)))? {
            Opened::Trusted(body) => protocol::decode_body(&body),
            Opened::ErrorOnly(body) => match protocol::decode_body::<Reply<Resp>>(&body)? {
                Err(error) => Ok(Err(error)),
                Ok(_) => Ok(Err(ErrorReply::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "{} answered without the cluster key's seal; is another program on its port?",
                        self.endpoint
                    ),
                ))),
            },
        }
    }

    /// Sends raw bytes and returns the raw reply; see [`Requester::exchange`].
    pub fn request_bytes(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.exchange(|| Ok((request.to_vec(), ()))).map(|(reply, ())| reply)
    }

    /// Sends the bytes `make` gives and returns the raw reply (with what `make` gave beside the
    /// bytes for that attempt), trying again on fresh connections: at most `1 + policy.retries`
    /// attempts, each with the policy's deadline, pausing between them (the pause doubles each
    /// time).
    fn exchange<T>(&mut self, mut make: impl FnMut() -> Result<(Vec<u8>, T)>) -> Result<(Vec<u8>, T)> {
        let mut backoff = self.policy.backoff;
        let attempts = self.policy.retries.saturating_add(1);
        for number in 1..=attempts {
            let (request, extra) = make()?;
            let deadline = Instant::now() + self.policy.timeout;
            let failure = match self.attempt(&request, deadline) {
                Ok(reply) => return Ok((reply, extra)),
                Err(failure) => failure,
            };
            // A REQ peer that sent and heard nothing cannot send again on this connection.
            self.connection = None;
            let why = match failure {
                Failure::Io(e) if is_timeout(&e) => "timed out".to_string(),
                Failure::Io(e) => e.to_string(),
                Failure::Fatal(reason) => return Err(Error::Network { endpoint: self.endpoint.clone(), reason }),
            };
            tracing::debug!(endpoint = %self.endpoint, attempt = number, %why, "no reply");
            if number < attempts {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(self.policy.timeout);
            }
        }
        Err(Error::Unreachable {
            endpoint: self.endpoint.clone(),
            attempts,
            timeout_ms: u64::try_from(self.policy.timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn attempt(&mut self, request: &[u8], deadline: Instant) -> std::result::Result<Vec<u8>, Failure> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            none => none.insert(Connection::open(&self.peer, deadline)?),
        };
        let mut message = Vec::with_capacity(request.len() + 11);
        zmtp::push_frame(&mut message, MORE, &[]);
        zmtp::push_frame(&mut message, 0, request);
        connection.send(&message, deadline)?;
        connection.read_reply(deadline)
    }
}

impl Peer {
    /// Connects, trying again while nothing listens there, until `deadline`.
    fn connect(&self, deadline: Instant) -> std::result::Result<Stream, Failure> {
        loop {
            let tried = match self {
                Peer::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
                Peer::Tcp(host_port) => {
                    // A name that does not resolve is said so at once, not after the retries.
                    let addresses = host_port
                        .to_socket_addrs()
                        .map_err(|e| Failure::Fatal(format!("cannot resolve {host_port}: {e}")))?;
                    connect_tcp(addresses, deadline).map(Stream::Tcp)
                }
            };
            match tried {
                // The head may be starting or restarting: its socket file or port is not there yet.
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                    if Instant::now() + RECONNECT_PAUSE >= deadline {
                        return Err(e.into());
                    }
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                other => return Ok(other?),
            }
        }
    }
}

fn connect_tcp(addresses: impl Iterator<Item = SocketAddr>, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::NotFound, "the host name has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, time_left(deadline)?) {
            Ok(stream) => {
                // As libzmq does: a request goes out whole, now.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn time_left(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(io::Error::from(ErrorKind::TimedOut)),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// Checks the peer's READY command: it must be a socket that answers REQ.
fn check_ready(body: &[u8]) -> std::result::Result<(), Failure> {
    match zmtp::ready_socket_type(body).map_err(Failure::Fatal)? {
        Some(kind) if kind != b"REP" && kind != b"ROUTER" => Err(Failure::Fatal(format!(
            "the peer is a ZeroMQ {} socket, which does not answer requests",
            String::from_utf8_lossy(kind)
        ))),
        _ => Ok(()),
    }
}

/// The two kinds of stream a peer is reached on.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read_until(&mut self, buffer: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = time_left(deadline)?;
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(buffer)),
            Stream::Unix(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(buffer)),
        }
    }

    fn write_until(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<usize> {
        let left = time_left(deadline)?;
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(left)).and_then(|()| s.write(bytes)),
            Stream::Unix(s) => s.set_write_timeout(Some(left)).and_then(|()| s.write(bytes)),
        }
    }
}

/// A connection to the peer, and what it has sent that is not read yet.
struct Connection {
    stream: Stream,
    received: Vec<u8>,
}

impl Connection {
    /// Connects to `peer` and makes the handshake: our greeting and READY, then the peer's.
    fn open(peer: &Peer, deadline: Instant) -> std::result::Result<Connection, Failure> {
        let mut connection = Connection { stream: peer.connect(deadline)?, received: Vec::new() };
        let mut hello = zmtp::greeting().to_vec();
        zmtp::push_ready(&mut hello, "REQ");
        connection.send(&hello, deadline)?;
        // Requests wait for the peer's READY: until libzmq has sent its own, it takes every frame
        // that comes for a handshake command and drops the connection.
        connection.read_handshake(deadline)?;
        Ok(connection)
    }

    fn send(&mut self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.write_until(bytes, deadline) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the peer sent next, waiting for it until `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read_until(&mut chunk, deadline) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the peer closed the connection")),
                Ok(got) => {
                    self.received.extend_from_slice(&chunk[..got]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next `n` bytes from the peer, waiting for them until `deadline`.
    fn take(&mut self, n: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        while self.received.len() < n {
            self.fill(deadline)?;
        }
        Ok(self.received.drain(..n).collect())
    }

    /// One frame: its flags and its body.
    fn frame(&mut self, deadline: Instant) -> std::result::Result<(u8, Vec<u8>), Failure> {
        loop {
            let parsed = zmtp::parse_frame(&self.received, MAX_REPLY)
                .map_err(|e| Failure::Fatal(format!("the peer's reply is too large: {e}")))?;
            if let Some(frame) = parsed {
                let body = self.received[frame.body.clone()].to_vec();
                self.received.drain(..frame.body.end);
                return Ok((frame.flags, body));
            }
            self.fill(deadline)?;
        }
    }

    fn read_handshake(&mut self, deadline: Instant) -> std::result::Result<(), Failure> {
        zmtp::check_greeting(&self.take(GREETING, deadline)?).map_err(Failure::Fatal)?;
        match self.frame(deadline)? {
            (flags, body) if flags & COMMAND != 0 => check_ready(&body),
            _ => Err(Failure::Fatal("the peer sent a message before its READY command".into())),
        }
    }

    /// The reply: an empty delimiter frame, then exactly one body frame.
    fn read_reply(&mut self, deadline: Instant) -> std::result::Result<Vec<u8>, Failure> {
        let mut frames = Vec::new();
        let mut total = 0u64;
        loop {
            let (flags, body) = self.frame(deadline)?;
            if flags & COMMAND != 0 {
                match zmtp::command(&body).map_err(Failure::Fatal)? {
                    (b"ERROR", rest) => return Err(Failure::Fatal(zmtp::refusal(rest))),
                    _ => continue, // PING and its like: nothing a REQ peer must answer here
                }
            }
            total += body.len() as u64;
            if total > MAX_REPLY {
                return Err(Failure::Fatal(format!("the peer's reply is over {MAX_REPLY} bytes")));
            }
            frames.push(body);
            if flags & MORE == 0 {
                break;
            }
        }
        if frames.first().is_none_or(|delimiter| !delimiter.is_empty()) {
            return Err(Failure::Fatal("the reply lacks the empty frame that opens a reply to REQ".into()));
        }
        match frames.len() {
            2 => Ok(frames.pop().unwrap_or_default()),
            n => Err(Failure::Fatal(format!("reply has {} frames, expected 1", n - 1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::echo;
    use crate::Responder;
    use std::net::TcpListener;

    fn client(endpoint: &str, timeout_ms: u64, retries: u32) -> Requester {
        let policy =
            RetryPolicy { timeout: Duration::from_millis(timeout_ms), retries, backoff: Duration::from_millis(10) };
        Requester::new(endpoint, policy, "t", Credentials::None).expect("a valid endpoint")
    }

    #[test]
    fn a_rep_socket_answers_over_tcp_and_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Responder::bind("127.0.0.1:0", 4 << 20).expect("bind");
        let unix = server.listen_on_unix_socket(&dir.path().join("head.sock")).expect("unix socket");
        let tcp = server.endpoint().to_string();
        let stop = echo(server);
        for endpoint in [&tcp, &unix] {
            let mut client = client(endpoint, 2000, 0);
            assert_eq!(client.request_bytes(b"hi").expect("reply"), b"echo:hi");
            // The same connection serves the next request, whatever its size (long frames).
            let big = vec![7u8; 300_000];
            let reply = client.request_bytes(&big).expect("reply");
            assert_eq!(reply.len(), 5 + big.len());
            assert!(reply.starts_with(b"echo:") && reply[5..] == big[..]);
            assert_eq!(client.request_bytes(b"").expect("reply"), b"echo:");
        }
        stop();
    }

    #[test]
    fn a_silent_peer_or_none_at_all_costs_bounded_time_and_reports_unreachable() {
        // Bound but never served: connections wait in the kernel's backlog, ungreeted.
        let silent = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let nobody = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
        let dir = tempfile::tempdir().expect("tempdir");
        let no_socket = format!("ipc://{}", dir.path().join("none.sock").display());
        for endpoint in [silent.endpoint().to_string(), format!("tcp://{nobody}"), no_socket] {
            let started = Instant::now();
            let err = client(&endpoint, 200, 2).request_bytes(b"ping").expect_err("no reply must be an error");
            assert!(matches!(err, Error::Unreachable { attempts: 3, .. }), "{endpoint}: {err}");
            let took = started.elapsed();
            // Nothing listening is tried again until each attempt's deadline, as libzmq does.
            assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{endpoint}: {took:?}");
        }
    }

    #[test]
    fn a_peer_that_starts_listening_within_the_deadline_gets_the_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("late.sock");
        let endpoint = format!("ipc://{}", path.display());
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
            server.listen_on_unix_socket(&path).expect("unix socket");
            echo(server)
        });
        assert_eq!(client(&endpoint, 3000, 0).request_bytes(b"late").expect("reply"), b"echo:late");
        late.join().expect("join")();
    }

    #[test]
    fn a_peer_that_restarts_between_two_requests_is_reached_again() {
        // As `cmrun --wait` polls a head that restarts: the kept connection is dead, a new one is made.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head.sock");
        let endpoint = format!("ipc://{}", path.display());
        let serve = || {
            let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
            server.listen_on_unix_socket(&path).expect("the last server removed its socket file");
            echo(server)
        };
        let stop = serve();
        let mut client = client(&endpoint, 2000, 2);
        assert_eq!(client.request_bytes(b"one").expect("reply"), b"echo:one");
        stop(); // drops the server: its connections close and its socket file goes
        assert!(!path.exists(), "the socket file outlived its server");
        let stop = serve();
        assert_eq!(client.request_bytes(b"two").expect("reply"), b"echo:two");
        stop();
    }

    #[test]
    fn a_request_over_the_peers_size_limit_is_refused_and_costs_bounded_time() {
        let server = Responder::bind("127.0.0.1:0", 1000).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let started = Instant::now();
        let err = client(&endpoint, 300, 1).request_bytes(&[0u8; 2000]).expect_err("over the limit");
        // The peer says why and hangs up; if the hang-up overtakes the reason, the attempts run out.
        let said = err.to_string().contains("over the limit of 1000 bytes");
        assert!(said || matches!(err, Error::Unreachable { attempts: 2, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // The peer serves the next client as before.
        assert_eq!(client(&endpoint, 2000, 0).request_bytes(b"small").expect("reply"), b"echo:small");
        stop();
    }

    /// A hand-written ZMTP peer on a raw TCP socket: it greets as `socket_type`, takes one request
    /// and answers with `reply_frames` (the delimiter is not added).
    fn scripted_peer(
        socket_type: &'static str,
        reply_frames: &'static [&'static [u8]],
    ) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("tcp://{}", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut hello = zmtp::greeting().to_vec();
            zmtp::push_ready(&mut hello, socket_type);
            stream.write_all(&hello).expect("greet");
            // The client's greeting, READY, delimiter and body: read until all four are in.
            let mut received = Vec::new();
            let mut frames = 0;
            while frames < 3 {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).expect("read");
                if n == 0 {
                    return; // the client gave up, as it must with a peer that answers nothing
                }
                received.extend_from_slice(&chunk[..n]);
                frames = 0;
                let mut at = GREETING.min(received.len());
                while let Ok(Some(frame)) = zmtp::parse_frame(&received[at..], 1 << 20) {
                    at += frame.body.end;
                    frames += 1;
                }
            }
            let mut reply = Vec::new();
            for (i, frame) in reply_frames.iter().enumerate() {
                zmtp::push_frame(&mut reply, if i + 1 < reply_frames.len() { MORE } else { 0 }, frame);
            }
            stream.write_all(&reply).expect("reply");
            let _ = stream.read(&mut [0u8; 64]); // until the client hangs up
        });
        (endpoint, server)
    }

    #[test]
    fn a_reply_of_several_frames_is_an_error_at_once() {
        let (endpoint, server) = scripted_peer("ROUTER", &[b"", b"a", b"b"]);
        let started = Instant::now();
        let err = client(&endpoint, 2000, 3).request_bytes(b"one").expect_err("two frames");
        assert!(err.to_string().contains("reply has 2 frames"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "not retried: {:?}", started.elapsed());
        server.join().expect("join");
    }

    #[test]
    fn a_peer_that_cannot_answer_requests_is_an_error_at_once() {
        let (endpoint, server) = scripted_peer("PUB", &[]);
        let err = client(&endpoint, 2000, 3).request_bytes(b"one").expect_err("a PUB socket");
        assert!(err.to_string().contains("ZeroMQ PUB socket"), "{err}");
        server.join().expect("join");
    }

    #[test]
    fn a_peer_that_does_not_speak_zmtp_is_an_error_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("tcp://{}", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let _ = stream.write_all(&[b'x'; GREETING]);
            // Hold the connection until the client has read the greeting and given up.
            let _ = stream.read(&mut [0u8; 4096]);
        });
        let err = client(&endpoint, 2000, 3).request_bytes(b"hi").expect_err("not ZMTP");
        assert!(err.to_string().contains("does not speak ZeroMQ's protocol"), "{err}");
        server.join().expect("join");
    }

    #[test]
    fn endpoints_other_than_tcp_and_ipc_are_refused() {
        let policy = RetryPolicy::new(Duration::from_secs(1), 0);
        let err =
            Requester::new("udp://10.0.0.1:5", policy, "t", Credentials::None).err().expect("udp is no endpoint here");
        assert!(err.to_string().contains("ipc://PATH"), "{err}");
        assert!(Requester::new("head:5001", policy, "t", Credentials::None).is_ok());
    }
}
