//! [`Responder`]: the REP socket a daemon answers on, owned by the loop that answers it, over TCP
//! and, for the head, a Unix socket for the tools on its host as well. It speaks ZMTP 3.0 itself
//! ([`crate::zmtp`]), as a libzmq REP socket does, to any REQ or DEALER peer: cm's own
//! [`crate::Requester`], libzmq, pyzmq.
//!
//! Why not libzmq: a libzmq socket hands every message between its I/O thread and the thread
//! that reads it, a wake-up on each side, and each connection's handshake and teardown run there
//! too. That thread was the largest transport cost left on the head (0.24 ms of CPU per short
//! job, docs/benchmarks.md). Here the loop that answers requests also does their I/O: one
//! `epoll` (through `mio`) watches the listeners, every connection and the loop's own wake-up
//! descriptor, and a request is read, handled and answered in the same thread.
//!
//! Every connection is non-blocking and kept apart: what a peer sends is parsed only as far as
//! it has arrived, a reply that does not fit the socket waits for it to drain, and a peer that
//! breaks the protocol, sends a frame over `max_message_size` or takes over 30 s to greet (libzmq's
//! handshake limit) is disconnected alone. Requests are handed out in the order they arrived, one
//! at a time, each to be answered before the next, as on a REP socket.

use crate::tcp_endpoint;
use crate::zmtp::{self, GREETING, MORE};
use cm_auth::Origin;
use cm_common::{Error, Result};
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TCP: Token = Token(0);
const UNIX: Token = Token(1);
const WAKE: Token = Token(2);
/// Connections take tokens from here up, each a new one.
const FIRST_PEER: usize = 3;

/// How long a peer may take to send its greeting and READY (libzmq's `ZMQ_HANDSHAKE_IVL`).
const HANDSHAKE_TIME: Duration = Duration::from_secs(30);

/// How soon a listener is tried again after an accept failed for want of descriptors (or memory):
/// its epoll event came and went, so without a retry the connections left in its backlog would
/// wait for the next one to arrive.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How much is read from one connection before the others get their turn: a peer that sends
/// without pause can neither starve the rest nor make the daemon buffer more than this (and the
/// frame it is in the middle of).
const READ_BUDGET: usize = 256 * 1024;

/// How many of one peer's requests may wait to be handed out, and how many of its replies may
/// wait for it to read them (libzmq's high-water marks). A REQ peer has one request out at a time;
/// a peer over either is flooding, and is disconnected, so that it cannot fill the daemon's memory.
const MAX_WAITING: usize = 1000;

/// What connections may hold of messages still arriving or not handed out yet, all together, in
/// `max_message_size`s. Past it, a connection holding more than [`FREE_PER_PEER`] is dropped: a
/// few peers sending huge messages slowly cannot fill the daemon's memory, and small requests,
/// which fit in the allowance, are still served.
const BUDGET_IN_MESSAGES: u64 = 4;

/// What each connection may hold regardless of the budget: any everyday request.
const FREE_PER_PEER: usize = 64 * 1024;

/// The most a connection may owe itself in replies it has not read, once it has several:
/// a peer that sends requests and never reads their replies cannot make the daemon keep them.
const MAX_OWED: usize = 16 << 20;

/// How long an open connection may stay silent, with nothing in flight, before it is closed:
/// clients reconnect on their next request (cm's requesters and libzmq do), and idle ones
/// cannot hold the daemon's descriptors for ever.
const IDLE_TIME: Duration = Duration::from_secs(600);

/// How many connections one peer may hold open at once: one host (by address) over TCP, one user
/// over the Unix socket. A cluster's daemons and tools need a handful each; a peer that opens
/// hundreds and leaves them idle could otherwise take every descriptor the daemon has.
const MAX_PER_PEER: usize = 256;

/// Who a connection comes from, for [`MAX_PER_PEER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    Host(std::net::IpAddr),
    User(u32),
    Unknown,
}

/// A REP server socket, owned by the loop that answers it.
pub struct Responder {
    poll: Poll,
    events: Events,
    tcp: TcpListener,
    unix: Option<UnixSocket>,
    endpoint: String,
    max_message_size: u64,
    /// The wake-up descriptor registered with the poll, if any.
    wake: Option<RawFd>,
    peers: HashMap<Token, Peer>,
    next_token: usize,
    /// Requests read whole and not handed out yet, in the order they arrived, with their sender.
    requests: VecDeque<(Token, Request)>,
    /// The sender of the request handed out last and the envelope its reply goes in.
    answering: Option<(Token, Vec<Vec<u8>>)>,
    /// When each connection's handshake must be done by, oldest first. Entries of connections
    /// that finished their handshake or closed leave from the front as it reaches them.
    handshakes: VecDeque<(Instant, Token)>,
    /// Listeners whose last accept failed with connections maybe left waiting, and when to try
    /// them again.
    accept_retry: Option<(Instant, Vec<Token>)>,
    /// The last accept failed (and was logged): the retries are not logged again until one works.
    accept_failing: bool,
    /// Connections that had more to read when their turn's budget ran out.
    unread: VecDeque<Token>,
    /// Scratch space for the poll's events, kept to spare an allocation per wait.
    ready: Vec<(Token, bool, bool)>,
    /// Bytes all connections hold of messages arriving or waiting to be handed out, and the most
    /// they may (see [`BUDGET_IN_MESSAGES`]).
    held: usize,
    budget: usize,
    /// See [`IDLE_TIME`]; and when idle connections are looked for next.
    idle_time: Duration,
    next_idle_sweep: Instant,
    /// Open connections by who they come from.
    per_peer: HashMap<PeerKey, usize>,
}

/// A request left to be answered later ([`Responder::defer`]).
#[derive(Debug)]
pub struct Deferred {
    token: Token,
    envelope: Vec<Vec<u8>>,
}

/// A request as it came off the socket: one frame, or why it was refused.
pub enum Incoming {
    Message(Vec<u8>),
    /// The message had several frames, or none; it is answered with an error.
    Malformed(String),
}

/// A request and the envelope (the frames up to its empty delimiter) its reply must go back in.
struct Request {
    envelope: Vec<Vec<u8>>,
    incoming: Incoming,
}

/// The Unix socket listened on, and which file it made, so that only that file is removed.
struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    file: (u64, u64),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// What both kinds of stream are to the poll and to the reads and writes.
trait Connection: mio::event::Source + Read + Write {}
impl Connection for TcpStream {}
impl Connection for UnixStream {}

impl Stream {
    fn io(&mut self) -> &mut dyn Connection {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

/// Where a connection's handshake stands.
#[derive(PartialEq)]
enum Stage {
    Greeting,
    Ready,
    Open,
}

/// One connection: what it sent that is not parsed yet, what we owe it that it has not taken.
struct Peer {
    stream: Stream,
    stage: Stage,
    received: Vec<u8>,
    unsent: Vec<u8>,
    /// How much of `unsent` went out already.
    sent: usize,
    /// The frames of the message coming in, and their size together.
    frames: Vec<Vec<u8>>,
    size: u64,
    /// Its requests read and not handed out yet.
    waiting: usize,
    /// Its replies not yet taken whole by its socket.
    replies_unsent: usize,
    /// Bytes of its requests read and not handed out yet.
    waiting_bytes: usize,
    /// When it last sent or took anything.
    last_active: Instant,
    /// It is in `unread`: its socket has more than its last turn read.
    unread: bool,
    /// Who the kernel says the peer is (a Unix socket's `SO_PEERCRED`); TCP peers are unknown.
    origin: Origin,
    key: PeerKey,
}

impl Responder {
    /// Listens on `address` (`HOST:PORT` or `tcp://HOST:PORT`; `*` is every interface, port 0
    /// picks a free port). A connection that sends a frame or a message over `max_message_size`
    /// bytes is dropped, so such a request never reaches [`Responder::try_recv`].
    pub fn bind(address: &str, max_message_size: u64) -> Result<Self> {
        let wanted = tcp_endpoint(address);
        let fail = |reason: String| Error::Network { endpoint: wanted.clone(), reason };
        let Some(host_port) = wanted.strip_prefix("tcp://") else {
            return Err(Error::InvalidSetting(format!(
                "cannot listen on {wanted}: use HOST:PORT or tcp://HOST:PORT (the head's Unix socket is head_socket)"
            )));
        };
        let host_port = match host_port.strip_prefix("*:") {
            Some(port) => format!("0.0.0.0:{port}"),
            None => host_port.to_string(),
        };
        let addresses = host_port.to_socket_addrs().map_err(|e| fail(format!("cannot resolve {host_port}: {e}")))?;
        let mut last = io::Error::new(ErrorKind::NotFound, "the host name has no address");
        let mut bound = None;
        for address in addresses {
            match TcpListener::bind(address) {
                Ok(listener) => {
                    bound = Some(listener);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut tcp = bound.ok_or_else(|| fail(last.to_string()))?;
        let endpoint = format!("tcp://{}", tcp.local_addr().map_err(|e| fail(e.to_string()))?);
        let poll = Poll::new().map_err(|e| fail(format!("cannot make a poll: {e}")))?;
        poll.registry().register(&mut tcp, TCP, Interest::READABLE).map_err(|e| fail(e.to_string()))?;
        Ok(Responder {
            poll,
            events: Events::with_capacity(256),
            tcp,
            unix: None,
            endpoint,
            max_message_size,
            wake: None,
            peers: HashMap::new(),
            next_token: FIRST_PEER,
            requests: VecDeque::new(),
            answering: None,
            handshakes: VecDeque::new(),
            accept_retry: None,
            accept_failing: false,
            unread: VecDeque::new(),
            ready: Vec::new(),
            held: 0,
            budget: usize::try_from(max_message_size.saturating_mul(BUDGET_IN_MESSAGES)).unwrap_or(usize::MAX),
            idle_time: IDLE_TIME,
            next_idle_sweep: Instant::now() + IDLE_TIME / 4,
            per_peer: HashMap::new(),
        })
    }

    /// Closes connections silent for `idle` (default 10 minutes) with nothing in flight.
    pub fn set_idle_time(&mut self, idle: Duration) {
        self.idle_time = idle;
        self.next_idle_sweep = Instant::now() + idle / 4;
    }

    /// The endpoint actually bound (with the real port when 0 was asked for).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Listens on the Unix socket `path` as well (creating its directory), open to every local
    /// user as the TCP endpoint is, and returns its endpoint (`ipc://PATH`). A socket file left
    /// by an earlier process is replaced; one that a live process still listens on is not, nor is
    /// anything at `path` that is not a socket. Requests from both arrive in one queue. The file
    /// is removed when the responder is dropped, unless another has replaced it meanwhile.
    pub fn listen_on_unix_socket(&mut self, path: &Path) -> Result<String> {
        let text = path.to_str().ok_or_else(|| Error::InvalidSetting(format!("{} is not UTF-8", path.display())))?;
        let endpoint = format!("ipc://{text}");
        let fail = |reason: String| Error::Network { endpoint: endpoint.clone(), reason };
        if self.unix.is_some() {
            return Err(fail("this responder already listens on a Unix socket".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        if let Ok(existing) = std::fs::symlink_metadata(path) {
            if !existing.file_type().is_socket() {
                return Err(fail("something that is not a socket is in the way".into()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another process is listening on this socket".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
        }
        let mut listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
        let made = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        let socket = UnixSocket {
            path: path.to_path_buf(),
            file: (made.dev(), made.ino()),
            listener: {
                self.poll
                    .registry()
                    .register(&mut listener, UNIX, Interest::READABLE)
                    .map_err(|e| fail(e.to_string()))?;
                listener
            },
        };
        self.unix = Some(socket);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| fail(format!("cannot open the socket to all local users: {e}")))?;
        Ok(endpoint)
    }

    fn error(&self, e: io::Error) -> Error {
        Error::Network { endpoint: self.endpoint.clone(), reason: e.to_string() }
    }

    /// Waits up to `timeout` until a request is waiting or `wake` (a descriptor another thread
    /// makes readable, such as an eventfd; the same one on every call) is readable, doing the
    /// connections' I/O meanwhile. A signal may cut the wait short.
    pub fn wait(&mut self, wake: Option<BorrowedFd<'_>>, timeout: Duration) -> Result<()> {
        if let Some(fd) = wake {
            self.watch(fd.as_raw_fd())?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !self.requests.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            self.end_slow_handshakes(now);
            if now >= self.next_idle_sweep {
                self.end_idle_connections(now);
                self.next_idle_sweep = now + (self.idle_time / 4).min(Duration::from_secs(10));
            }
            let mut wait =
                deadline.saturating_duration_since(now).min(self.next_idle_sweep.saturating_duration_since(now));
            if let Some(&(by, _)) = self.handshakes.front() {
                wait = wait.min(by.saturating_duration_since(now));
            }
            if let Some((at, _)) = &self.accept_retry {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if !self.unread.is_empty() {
                wait = Duration::ZERO; // there is reading to do already
            }
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
                Err(e) => return Err(self.error(e)),
            }
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(
                self.events
                    .iter()
                    .map(|e| (e.token(), e.is_readable() || e.is_read_closed() || e.is_error(), e.is_writable())),
            );
            let mut woken = false;
            for &(token, readable, writable) in &ready {
                match token {
                    WAKE => woken = true,
                    TCP | UNIX => self.accept(token),
                    peer => self.serve_peer(peer, readable, writable),
                }
            }
            self.ready = ready;
            if self.accept_retry.as_ref().is_some_and(|(at, _)| *at <= Instant::now()) {
                for listener in self.accept_retry.take().map(|(_, listeners)| listeners).unwrap_or_default() {
                    self.accept(listener);
                }
            }
            // Then a turn for each connection left with more to read, in order.
            for _ in 0..self.unread.len() {
                if let Some(token) = self.unread.pop_front() {
                    if let Some(peer) = self.peers.get_mut(&token) {
                        peer.unread = false;
                        self.serve_peer(token, true, false);
                    }
                }
            }
            if woken || !self.requests.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Registers the loop's wake-up descriptor, once.
    fn watch(&mut self, fd: RawFd) -> Result<()> {
        if self.wake == Some(fd) {
            return Ok(());
        }
        let registry = self.poll.registry();
        if let Some(old) = self.wake.take() {
            let _ = registry.deregister(&mut SourceFd(&old));
        }
        registry.register(&mut SourceFd(&fd), WAKE, Interest::READABLE).map_err(|e| self.error(e))?;
        self.wake = Some(fd);
        Ok(())
    }

    /// The next request, if one is waiting. Each must be answered with [`Responder::send`]
    /// before the next is taken: a REP socket answers in order.
    pub fn try_recv(&mut self) -> Result<Option<Incoming>> {
        let Some((token, request)) = self.requests.pop_front() else { return Ok(None) };
        if let Some(peer) = self.peers.get_mut(&token) {
            let bytes = request.bytes();
            peer.waiting_bytes = peer.waiting_bytes.saturating_sub(bytes);
            self.held = self.held.saturating_sub(bytes);
            peer.waiting -= 1;
        }
        if self.answering.is_some() {
            tracing::warn!(endpoint = %self.endpoint, "a request was taken before the last one was answered");
        }
        self.answering = Some((token, request.envelope));
        Ok(Some(request.incoming))
    }

    /// Who sent the request taken last, as far as the kernel can tell: the uid of a Unix socket's
    /// peer, or [`Origin::Network`] (also for a peer that has gone).
    pub fn origin(&self) -> Origin {
        let peer = self.answering.as_ref().and_then(|(token, _)| self.peers.get(token));
        peer.map_or(Origin::Network, |peer| peer.origin)
    }

    /// Answers the request taken last. A requester that has gone away is not an error here: its
    /// retry, on a fresh connection, will be answered then.
    pub fn send(&mut self, reply: &[u8]) {
        let Some((token, envelope)) = self.answering.take() else {
            tracing::warn!(endpoint = %self.endpoint, "a reply with no request to answer was dropped");
            return;
        };
        self.send_to(token, envelope, reply);
    }

    /// Leaves the request taken last to be answered later, with [`Responder::send_later`], so
    /// that others are taken meanwhile. Its peer, a REQ socket, sends nothing more until then;
    /// a DEALER peer's later requests may be answered first.
    pub fn defer(&mut self) -> Option<Deferred> {
        self.answering.take().map(|(token, envelope)| Deferred { token, envelope })
    }

    /// Answers a deferred request (nothing happens if its peer has gone).
    pub fn send_later(&mut self, deferred: Deferred, reply: &[u8]) {
        self.send_to(deferred.token, deferred.envelope, reply);
    }

    /// Whether the peer of a deferred request is still connected.
    pub fn is_connected(&self, deferred: &Deferred) -> bool {
        self.peers.contains_key(&deferred.token)
    }

    fn send_to(&mut self, token: Token, envelope: Vec<Vec<u8>>, reply: &[u8]) {
        let Some(peer) = self.peers.get_mut(&token) else {
            tracing::debug!(endpoint = %self.endpoint, "the requester left before its reply");
            return;
        };
        for part in &envelope {
            zmtp::push_frame(&mut peer.unsent, MORE, part);
        }
        zmtp::push_frame(&mut peer.unsent, MORE, &[]);
        zmtp::push_frame(&mut peer.unsent, 0, reply);
        peer.replies_unsent += 1;
        peer.last_active = Instant::now();
        let owed = peer.unsent.len() - peer.sent;
        if peer.replies_unsent > MAX_WAITING {
            self.disconnect(token, &format!("over {MAX_WAITING} replies it does not read"));
        } else if peer.replies_unsent > 1 && owed > MAX_OWED {
            self.disconnect(token, &format!("{owed} bytes of replies it does not read"));
        } else if let Err(e) = peer.flush() {
            self.disconnect(token, &format!("cannot send the reply: {e}"));
        }
    }

    /// Serves until `shutdown` is set: one request in, one reply out, in order.
    pub fn serve(&mut self, shutdown: &AtomicBool, mut handler: impl FnMut(Incoming) -> Vec<u8>) -> Result<()> {
        while !shutdown.load(Ordering::Relaxed) {
            // The timeout only bounds how late a shutdown is noticed.
            self.wait(None, Duration::from_millis(200))?;
            while let Some(incoming) = self.try_recv()? {
                let reply = handler(incoming);
                self.send(&reply);
            }
        }
        Ok(())
    }

    /// Takes every connection waiting on a listener, and greets each.
    fn accept(&mut self, listener: Token) {
        loop {
            let accepted = match (listener, &self.unix) {
                (TCP, _) => self.tcp.accept().map(|(stream, _)| {
                    // As libzmq does: a reply goes out whole, now.
                    let _ = stream.set_nodelay(true);
                    Stream::Tcp(stream)
                }),
                (_, Some(unix)) => unix.listener.accept().map(|(stream, _)| Stream::Unix(stream)),
                (_, None) => return,
            };
            match accepted {
                Ok(stream) => {
                    if std::mem::take(&mut self.accept_failing) {
                        tracing::info!(endpoint = %self.endpoint, "accepting connections again");
                    }
                    self.greet(stream)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // Out of descriptors, say: the connection waits in the backlog, and the
                    // listener is tried again shortly (its epoll event will not come again).
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot accept a connection; trying again every 100 ms");
                    }
                    let (_, listeners) =
                        self.accept_retry.get_or_insert_with(|| (Instant::now() + ACCEPT_RETRY, Vec::new()));
                    if !listeners.contains(&listener) {
                        listeners.push(listener);
                    }
                    return;
                }
            }
        }
    }

    fn greet(&mut self, mut stream: Stream) {
        // The peer's credentials as of its connect; a Unix peer whose cannot be read is refused.
        let key = match &stream {
            Stream::Tcp(tcp) => tcp.peer_addr().map_or(PeerKey::Unknown, |address| PeerKey::Host(address.ip())),
            Stream::Unix(_) => PeerKey::Unknown,
        };
        let origin = match &stream {
            Stream::Tcp(_) => Origin::Network,
            Stream::Unix(unix) => match getsockopt(unix, PeerCredentials) {
                Ok(cred) => Origin::Local { uid: cred.uid() },
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot read a local peer's credentials");
                    return;
                }
            },
        };
        let key = match origin {
            Origin::Local { uid } => PeerKey::User(uid),
            Origin::Network => key,
        };
        let open = self.per_peer.entry(key).or_insert(0);
        if *open >= MAX_PER_PEER {
            tracing::warn!(endpoint = %self.endpoint, peer = ?key, "refused a connection: the peer has {MAX_PER_PEER} open already");
            return;
        }
        *open += 1;
        let token = Token(self.next_token);
        self.next_token += 1;
        let registered = self.poll.registry().register(stream.io(), token, Interest::READABLE | Interest::WRITABLE);
        if let Err(e) = registered {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "cannot watch a new connection");
            self.forget_peer(key);
            return;
        }
        let mut unsent = zmtp::greeting().to_vec();
        zmtp::push_ready(&mut unsent, "REP");
        let peer = Peer {
            stream,
            stage: Stage::Greeting,
            received: Vec::new(),
            unsent,
            sent: 0,
            frames: Vec::new(),
            size: 0,
            waiting: 0,
            replies_unsent: 0,
            waiting_bytes: 0,
            last_active: Instant::now(),
            unread: false,
            origin,
            key,
        };
        self.peers.insert(token, peer);
        self.handshakes.push_back((Instant::now() + HANDSHAKE_TIME, token));
        self.serve_peer(token, false, true);
    }

    /// Reads what a connection sent and queues its whole requests; sends what it is owed.
    fn serve_peer(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(peer) = self.peers.get_mut(&token) else { return };
        let held_before = peer.held();
        let outcome = (|| {
            if writable {
                peer.flush().map_err(|e| format!("cannot send: {e}"))?;
            }
            if !readable {
                return Ok(true);
            }
            let (open, drained) = peer.read_some().map_err(|e| format!("cannot read: {e}"))?;
            peer.parse(self.max_message_size, token, &mut self.requests)?;
            if open && !drained && !peer.unread {
                peer.unread = true;
                self.unread.push_back(token);
            }
            // A PING's PONG, an ERROR before closing: whatever parsing owes the peer goes now.
            peer.flush().map_err(|e| format!("cannot send: {e}"))?;
            Ok::<bool, String>(open)
        })();
        let held = peer.held();
        self.held = (self.held + held).saturating_sub(held_before);
        let outcome = match outcome {
            Ok(true) if self.held > self.budget && held > FREE_PER_PEER => Err(format!(
                "over the budget for messages being received: all connections hold {} bytes, this one {held}",
                self.held
            )),
            other => other,
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => self.disconnect(token, "closed by the peer"),
            Err(why) => self.disconnect(token, &why),
        }
    }

    /// Forgets a connection and its requests that were not handed out yet: no reply could reach it.
    fn disconnect(&mut self, token: Token, why: &str) {
        let Some(mut peer) = self.peers.remove(&token) else { return };
        self.held = self.held.saturating_sub(peer.held());
        self.forget_peer(peer.key);
        if why.starts_with("over the budget") || why.contains("does not read") {
            tracing::warn!(endpoint = %self.endpoint, %why, "a connection was dropped");
        } else {
            tracing::debug!(endpoint = %self.endpoint, %why, "connection ended");
        }
        let _ = self.poll.registry().deregister(peer.stream.io());
        self.requests.retain(|(from, _)| *from != token);
    }

    /// One connection fewer from `key`.
    fn forget_peer(&mut self, key: PeerKey) {
        if let Some(open) = self.per_peer.get_mut(&key) {
            *open -= 1;
            if *open == 0 {
                self.per_peer.remove(&key);
            }
        }
    }

    /// Closes the open connections that have been silent for the idle time with nothing in flight.
    fn end_idle_connections(&mut self, now: Instant) {
        let answering = self.answering.as_ref().map(|(token, _)| *token);
        let idle: Vec<Token> = self
            .peers
            .iter()
            .filter(|(token, peer)| {
                Some(**token) != answering
                    && peer.stage == Stage::Open
                    && peer.held() == 0
                    && peer.sent == peer.unsent.len()
                    && now.saturating_duration_since(peer.last_active) >= self.idle_time
            })
            .map(|(token, _)| *token)
            .collect();
        for token in idle {
            self.disconnect(token, "idle");
        }
    }

    /// Drops the connections whose handshake is overdue, and forgets the deadlines of those that
    /// are done with it (open or gone) as far as the oldest one still greeting: connections
    /// mostly finish in the order they came, so the queue stays about as long as the number of
    /// connections greeting now, not the number made in the last 30 s.
    fn end_slow_handshakes(&mut self, now: Instant) {
        while let Some(&(by, token)) = self.handshakes.front() {
            let greeting = self.peers.get(&token).is_some_and(|peer| peer.stage != Stage::Open);
            if greeting && by > now {
                return;
            }
            self.handshakes.pop_front();
            if greeting {
                self.disconnect(token, "no handshake within 30 s");
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // Remove the socket file we made, but not one a newer process has put in its place.
        if let Some(unix) = &self.unix {
            if std::fs::metadata(&unix.path).is_ok_and(|m| (m.dev(), m.ino()) == unix.file) {
                let _ = std::fs::remove_file(&unix.path);
            }
        }
    }
}

/// Gives back what an empty buffer holds beyond what everyday messages need: a connection kept
/// open (a compute node's) need not hold on to the room its largest message ever took.
fn shrink(buffer: &mut Vec<u8>) {
    const KEEP: usize = 64 * 1024;
    if buffer.is_empty() && buffer.capacity() > KEEP {
        buffer.shrink_to(KEEP);
    }
}

impl Request {
    /// What it holds in memory, about.
    fn bytes(&self) -> usize {
        let body = match &self.incoming {
            Incoming::Message(bytes) => bytes.len(),
            Incoming::Malformed(why) => why.len(),
        };
        body + self.envelope.iter().map(Vec::len).sum::<usize>()
    }
}

impl Peer {
    /// What it holds of messages arriving or not handed out yet.
    fn held(&self) -> usize {
        self.received.len() + usize::try_from(self.size).unwrap_or(usize::MAX) + self.waiting_bytes
    }

    /// Writes what is owed until the socket takes no more.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.unsent.len() {
            let pending = &self.unsent[self.sent..];
            match self.stream.io().write(pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.unsent.clear();
        self.sent = 0;
        self.replies_unsent = 0;
        shrink(&mut self.unsent);
        Ok(())
    }

    /// Reads what the socket holds, up to [`READ_BUDGET`]: whether the peer's end is still open,
    /// and whether the socket was drained (if not, the caller must come back: epoll reports a
    /// socket only when more arrives).
    fn read_some(&mut self) -> io::Result<(bool, bool)> {
        let mut chunk = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match self.stream.io().read(&mut chunk) {
                Ok(0) => return Ok((false, true)),
                Ok(n) => {
                    self.received.extend_from_slice(&chunk[..n]);
                    self.last_active = Instant::now();
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((true, true)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((true, false))
    }

    /// Parses what has arrived: the greeting, the READY, then messages; whole requests go to
    /// `requests`. An error is a protocol violation; the connection is to be dropped.
    fn parse(&mut self, max: u64, token: Token, requests: &mut VecDeque<(Token, Request)>) -> Result<(), String> {
        // Taken out while the frames in it are handed to `self`'s methods, and put back after.
        let mut received = std::mem::take(&mut self.received);
        let mut at = 0;
        let result = loop {
            let rest = &received[at..];
            if self.stage == Stage::Greeting {
                if rest.len() < GREETING {
                    break Ok(());
                }
                if let Err(why) = zmtp::check_greeting(&rest[..GREETING]) {
                    break Err(why);
                }
                at += GREETING;
                self.stage = Stage::Ready;
                continue;
            }
            let frame = match zmtp::parse_frame(rest, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(why) => break Err(why),
            };
            at += frame.body.end;
            let body = &rest[frame.body.clone()];
            let step = if self.stage == Stage::Ready {
                self.take_ready(&frame, body)
            } else if frame.is_command() {
                self.take_command(body)
            } else {
                self.take_part(&frame, body, max, token, requests)
            };
            if let Err(why) = step {
                break Err(why);
            }
        };
        received.drain(..at);
        shrink(&mut received);
        self.received = received;
        if let Err(why) = &result {
            // Tell a ZMTP peer why, as libzmq does; it may not be listening any more.
            if self.stage != Stage::Greeting {
                zmtp::push_error(&mut self.unsent, why);
                let _ = self.flush();
            }
        }
        result
    }

    fn take_ready(&mut self, frame: &zmtp::Frame, body: &[u8]) -> Result<(), String> {
        if !frame.is_command() {
            return Err("a message came before the READY command".into());
        }
        match zmtp::ready_socket_type(body)? {
            Some(b"REQ" | b"DEALER") => {
                self.stage = Stage::Open;
                Ok(())
            }
            Some(other) => Err(format!("a {} socket cannot talk to REP", String::from_utf8_lossy(other))),
            None => Err("the READY command names no socket type".into()),
        }
    }

    fn take_command(&mut self, body: &[u8]) -> Result<(), String> {
        match zmtp::command(body)? {
            // ZMTP 3.1's heartbeat: a 2-byte time to live, then up to 16 bytes of context to echo.
            (b"PING", data) => {
                let context = data.get(2..).unwrap_or_default();
                zmtp::push_command(&mut self.unsent, "PONG", &context[..context.len().min(16)]);
                Ok(())
            }
            (b"ERROR", rest) => Err(zmtp::refusal(rest)),
            _ => Ok(()),
        }
    }

    /// One frame of a message; a whole message becomes a request.
    fn take_part(
        &mut self,
        frame: &zmtp::Frame,
        body: &[u8],
        max: u64,
        token: Token,
        requests: &mut VecDeque<(Token, Request)>,
    ) -> Result<(), String> {
        self.size += body.len() as u64;
        if self.size > max {
            return Err(format!("a message is over the limit of {max} bytes"));
        }
        self.frames.push(body.to_vec());
        if frame.more() {
            return Ok(());
        }
        self.size = 0;
        let mut frames = std::mem::take(&mut self.frames);
        // As a REP socket does: the frames up to the first empty one are the envelope, the rest
        // the request. A message with no delimiter is not a request; libzmq drops it too.
        let Some(delimiter) = frames.iter().position(Vec::is_empty) else {
            tracing::debug!("dropped a message without the empty frame that opens a request");
            return Ok(());
        };
        let mut body = frames.split_off(delimiter + 1);
        let incoming = match body.len() {
            1 => Incoming::Message(body.pop().unwrap_or_default()),
            n => Incoming::Malformed(format!("a request must be one frame, got {n}")),
        };
        frames.pop(); // the delimiter, which `send` puts back
        if self.waiting >= MAX_WAITING {
            return Err(format!("over {MAX_WAITING} requests sent without waiting for replies"));
        }
        self.waiting += 1;
        let request = Request { envelope: frames, incoming };
        self.waiting_bytes += request.bytes();
        requests.push_back((token, request));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::echo;
    use crate::{Requester, RetryPolicy};
    use cm_auth::Credentials;
    use std::net::TcpStream as RawStream;
    use std::sync::Arc;

    /// An echo server on a free TCP port: its endpoint, and the function that stops it.
    fn echo_server(max_message_size: u64) -> (String, impl FnOnce()) {
        let server = Responder::bind("127.0.0.1:0", max_message_size).expect("bind");
        (server.endpoint().to_string(), echo(server))
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_secs(5), 0)
    }

    /// A hand-driven peer on a plain socket: greets as `socket_type` and reads the REP's greeting
    /// and READY.
    fn raw_peer(endpoint: &str, socket_type: &str) -> (RawStream, Vec<u8>) {
        let mut stream = RawStream::connect(endpoint.trim_start_matches("tcp://")).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut hello = zmtp::greeting().to_vec();
        zmtp::push_ready(&mut hello, socket_type);
        stream.write_all(&hello).expect("greet");
        let mut received = Vec::new();
        let (_, ready) = next_frame(&mut stream, &mut received, GREETING);
        assert_eq!(zmtp::ready_socket_type(&ready).expect("READY"), Some(&b"REP"[..]));
        (stream, received)
    }

    /// The next frame the peer receives (flags, body), after skipping `skip` bytes first.
    fn next_frame(stream: &mut RawStream, received: &mut Vec<u8>, skip: usize) -> (u8, Vec<u8>) {
        loop {
            if received.len() >= skip {
                if let Some(frame) = zmtp::parse_frame(&received[skip..], u64::MAX).expect("a frame") {
                    let body = received[skip + frame.body.start..skip + frame.body.end].to_vec();
                    received.drain(..skip + frame.body.end);
                    return (frame.flags, body);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the REP hung up");
            received.extend_from_slice(&chunk[..n]);
        }
    }

    fn send_frames(stream: &mut RawStream, frames: &[&[u8]]) {
        let mut bytes = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            zmtp::push_frame(&mut bytes, if i + 1 < frames.len() { MORE } else { 0 }, frame);
        }
        stream.write_all(&bytes).expect("send");
    }

    /// Whether the daemon dropped `stream`: it reads the end of the stream, past whatever the
    /// daemon had sent, within a second.
    fn dropped(stream: &mut RawStream) -> bool {
        stream.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn huge_messages_sent_slowly_cannot_fill_memory_and_small_requests_are_still_served() {
        // 1 MiB messages: the connections together may hold 4 MiB of them.
        let server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let mut frames = Vec::new();
        zmtp::push_frame(&mut frames, MORE, &[]);
        zmtp::push_frame(&mut frames, 0, &vec![7u8; (1 << 20) - 100]);
        let mut slow: Vec<RawStream> = (0..10)
            .map(|_| {
                let (mut stream, _) = raw_peer(&endpoint, "REQ");
                stream.write_all(&frames[..900_000]).expect("most of a message");
                stream
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let dropped = slow.iter_mut().map(dropped).filter(|gone| *gone).count();
        assert!((6..=10).contains(&dropped), "{dropped} of 10 dropped: the budget holds four");
        let policy = RetryPolicy::new(Duration::from_secs(5), 0);
        let mut client = Requester::new(&endpoint, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"small").expect("served"), b"echo:small");
        stop();
    }

    #[test]
    fn a_peer_that_does_not_read_its_replies_is_dropped_once_they_pile_up() {
        let server = Responder::bind("127.0.0.1:0", 32 << 20).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let (mut stream, _) = raw_peer(&endpoint, "DEALER");
        // Each 4 MiB request gets a 4 MiB echo: more than the socket buffers once a few pile up.
        let request = vec![1u8; 4 << 20];
        let mut sent = 0;
        while sent < 20 {
            let mut bytes = Vec::new();
            zmtp::push_frame(&mut bytes, MORE, &[]);
            zmtp::push_frame(&mut bytes, 0, &request);
            if stream.write_all(&bytes).is_err() {
                break;
            }
            sent += 1;
        }
        assert!(sent < 20 || dropped(&mut stream), "20 requests sent and the connection still open");
        let policy = RetryPolicy::new(Duration::from_secs(5), 0);
        let mut client = Requester::new(&endpoint, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"next").expect("served"), b"echo:next");
        stop();
    }

    #[test]
    fn one_host_may_hold_only_so_many_connections_and_others_are_still_served() {
        let server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let address = endpoint.trim_start_matches("tcp://");
        let mut held: Vec<RawStream> =
            (0..MAX_PER_PEER).map(|_| RawStream::connect(address).expect("connect")).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut one_more = RawStream::connect(address).expect("the kernel accepts it");
        assert!(dropped(&mut one_more), "connection {} was kept", MAX_PER_PEER + 1);
        // Once the host closes some, it is served again.
        let other = RetryPolicy::new(Duration::from_secs(5), 0);
        held.truncate(10);
        std::thread::sleep(Duration::from_millis(300));
        let mut client = Requester::new(&endpoint, other, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"b").expect("served again"), b"echo:b");
        stop();
    }

    #[test]
    fn idle_connections_are_closed_and_their_clients_reconnect() {
        let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        server.set_idle_time(Duration::from_millis(300));
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let (mut idle, _) = raw_peer(&endpoint, "REQ");
        let policy = RetryPolicy::new(Duration::from_secs(5), 2);
        let mut client = Requester::new(&endpoint, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"a").expect("reply"), b"echo:a");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(dropped(&mut idle), "an idle connection stays open");
        assert_eq!(client.request_bytes(b"b").expect("reply after reconnecting"), b"echo:b");
        stop();
    }

    /// A connection done with its handshake, or gone, does not keep its 30 s deadline queued: at
    /// a thousand tool runs a second that queue held 30,000 entries.
    #[test]
    fn deadlines_of_finished_handshakes_are_forgotten() {
        let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    server.wait(None, Duration::from_millis(20)).expect("wait");
                }
                server
            })
        };
        for _ in 0..50 {
            drop(raw_peer(&endpoint, "REQ"));
        }
        let (open, _) = raw_peer(&endpoint, "REQ");
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let server = serving.join().expect("server");
        assert_eq!(server.peers.len(), 1, "the open connection is kept");
        assert!(server.handshakes.is_empty(), "{} deadlines still queued", server.handshakes.len());
        drop(open);
    }

    #[test]
    fn many_clients_at_once_each_get_their_own_replies() {
        let (endpoint, stop) = echo_server(1 << 20);
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let endpoint = endpoint.clone();
                std::thread::spawn(move || {
                    let mut client = Requester::new(&endpoint, policy(), "t", Credentials::None).expect("endpoint");
                    for i in 0..50 {
                        let request = format!("{c}/{i}");
                        let reply = client.request_bytes(request.as_bytes()).expect("reply");
                        assert_eq!(reply, format!("echo:{request}").as_bytes());
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a client got another's reply or none");
        }
        stop();
    }

    #[test]
    fn a_peer_that_stalls_or_breaks_the_protocol_holds_up_no_one_else() {
        let (endpoint, stop) = echo_server(32 << 20);
        // Connected and silent; greeted and then sending part of a frame; sending junk; asking
        // for a reply it never reads, larger than any socket buffer.
        let _silent = RawStream::connect(endpoint.trim_start_matches("tcp://")).expect("connect");
        let (mut cut, _) = raw_peer(&endpoint, "REQ");
        cut.write_all(&[0x02, 0, 0, 0]).expect("half a long frame header");
        let (mut junk, mut received) = raw_peer(&endpoint, "REQ");
        junk.write_all(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).expect("a frame of 2^64 - 1 bytes");
        let (flags, error) = next_frame(&mut junk, &mut received, 0);
        assert!(flags & zmtp::COMMAND != 0, "an ERROR command before hanging up");
        assert!(String::from_utf8_lossy(&error).contains("over the limit"), "{error:?}");
        let (mut greedy, _) = raw_peer(&endpoint, "REQ");
        send_frames(&mut greedy, &[b"", &vec![1u8; 24 << 20]]);
        let mut client = Requester::new(&endpoint, policy(), "t", Credentials::None).expect("endpoint");
        for i in 0..20 {
            let request = format!("still here {i}");
            assert_eq!(client.request_bytes(request.as_bytes()).expect("reply"), format!("echo:{request}").as_bytes());
        }
        // The greedy peer's reply was kept for it, whole.
        let mut received = Vec::new();
        assert_eq!(next_frame(&mut greedy, &mut received, 0), (MORE, vec![]));
        let (flags, body) = next_frame(&mut greedy, &mut received, 0);
        assert_eq!((flags & MORE, body.len()), (0, 5 + (24 << 20)));
        stop();
    }

    #[test]
    fn a_peer_that_sends_requests_without_reading_replies_is_cut_off() {
        let (endpoint, stop) = echo_server(1 << 20);
        // A DEALER may send without waiting; this one never reads. Once the daemon holds a
        // thousand requests or replies for it, beyond what the sockets' buffers take, it hangs up
        // instead of growing (here after 1,700-1,900 of these; reading all a peer sent before
        // parsing any, it took 42,000), and no one else waits meanwhile.
        let (mut flooder, _) = raw_peer(&endpoint, "DEALER");
        let flood = std::thread::spawn(move || {
            let request = vec![7u8; 10_000];
            let mut message = Vec::new();
            for _ in 0..100 {
                zmtp::push_frame(&mut message, MORE, &[]);
                zmtp::push_frame(&mut message, 0, &request);
            }
            flooder.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut sent = 0;
            loop {
                if let Err(e) = flooder.write_all(&message) {
                    return (sent, e);
                }
                sent += 100;
                assert!(sent < 20_000, "a peer that reads nothing was taken {sent} requests");
            }
        });
        let mut client = Requester::new(&endpoint, policy(), "t", Credentials::None).expect("endpoint");
        while !flood.is_finished() {
            assert_eq!(client.request_bytes(b"meanwhile").expect("reply"), b"echo:meanwhile");
        }
        let (sent, cut_off) = flood.join().expect("flooder");
        assert!(
            matches!(cut_off.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "after {sent} requests: {cut_off}"
        );
        assert_eq!(client.request_bytes(b"next").expect("reply"), b"echo:next");
        stop();
    }

    #[test]
    fn a_request_of_several_frames_is_refused_and_a_dealer_envelope_comes_back() {
        let (endpoint, stop) = echo_server(1 << 20);
        // A REQ peer's message of two body frames: handed over as malformed, for an error reply.
        let (mut req, mut received) = raw_peer(&endpoint, "REQ");
        send_frames(&mut req, &[b"", b"a", b"b"]);
        assert_eq!(next_frame(&mut req, &mut received, 0), (MORE, vec![]));
        assert_eq!(next_frame(&mut req, &mut received, 0), (0, b"a request must be one frame, got 2".to_vec()));
        // A DEALER peer routing through a proxy: the frames before the delimiter come back as sent.
        let (mut dealer, mut received) = raw_peer(&endpoint, "DEALER");
        send_frames(&mut dealer, &[b"hop", b"", b"x"]);
        assert_eq!(next_frame(&mut dealer, &mut received, 0), (MORE, b"hop".to_vec()));
        assert_eq!(next_frame(&mut dealer, &mut received, 0), (MORE, vec![]));
        assert_eq!(next_frame(&mut dealer, &mut received, 0), (0, b"echo:x".to_vec()));
        // A heartbeat (ZMTP 3.1's PING) is answered with its context.
        let mut ping = Vec::new();
        zmtp::push_command(&mut ping, "PING", b"\x00\x0actx");
        dealer.write_all(&ping).expect("ping");
        let (flags, pong) = next_frame(&mut dealer, &mut received, 0);
        assert!(flags & zmtp::COMMAND != 0);
        assert_eq!(zmtp::command(&pong).expect("a command"), (&b"PONG"[..], &b"ctx"[..]));
        // A socket type that cannot talk to REP is refused with a reason.
        let (mut publisher, mut received) =
            (RawStream::connect(endpoint.trim_start_matches("tcp://")).expect("connect"), Vec::new());
        let mut hello = zmtp::greeting().to_vec();
        zmtp::push_ready(&mut hello, "PUB");
        publisher.write_all(&hello).expect("greet");
        let _ready = next_frame(&mut publisher, &mut received, GREETING);
        let (_, error) = next_frame(&mut publisher, &mut received, 0);
        assert!(String::from_utf8_lossy(&error).contains("PUB socket cannot talk to REP"), "{error:?}");
        stop();
    }

    #[test]
    fn requests_are_answered_and_the_server_stops_on_shutdown() {
        let (endpoint, stop) = echo_server(1 << 20);
        let mut client = Requester::new(&endpoint, RetryPolicy::new(Duration::from_secs(2), 1), "t", Credentials::None)
            .expect("endpoint");
        assert_eq!(client.request_bytes(b"hi").expect("reply"), b"echo:hi");
        assert_eq!(client.request_bytes(b"again").expect("reply"), b"echo:again");
        stop();
    }

    #[test]
    fn a_unix_socket_serves_alongside_tcp_and_every_local_user_may_connect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/cm/head.sock");
        let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let unix = server.listen_on_unix_socket(&path).expect("unix socket");
        assert_eq!(unix, format!("ipc://{}", path.display()));
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode();
        assert_eq!(mode & 0o777, 0o666, "mode {mode:o}");
        let tcp = server.endpoint().to_string();
        let stop = echo(server);
        let policy = RetryPolicy::new(Duration::from_secs(2), 1);
        let mut over_unix = Requester::new(&unix, policy, "t", Credentials::None).expect("endpoint");
        let mut over_tcp = Requester::new(&tcp, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(over_unix.request_bytes(b"a").expect("reply"), b"echo:a");
        assert_eq!(over_tcp.request_bytes(b"b").expect("reply"), b"echo:b");
        stop();
    }

    #[test]
    fn the_kernel_names_a_unix_socket_peer_and_nobody_over_tcp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let unix = server.listen_on_unix_socket(&dir.path().join("head.sock")).expect("unix socket");
        let tcp = server.endpoint().to_string();
        let policy = RetryPolicy::new(Duration::from_secs(5), 0);
        for (endpoint, expected) in
            [(unix, Origin::Local { uid: nix::unistd::getuid().as_raw() }), (tcp, Origin::Network)]
        {
            let client = std::thread::spawn(move || {
                let mut client = Requester::new(&endpoint, policy, "t", Credentials::None).expect("endpoint");
                client.request_bytes(b"who").expect("reply")
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let incoming = loop {
                server.wait(None, Duration::from_millis(100)).expect("wait");
                if let Some(incoming) = server.try_recv().expect("recv") {
                    break incoming;
                }
                assert!(Instant::now() < deadline, "no request came");
            };
            assert!(matches!(incoming, Incoming::Message(ref m) if m == b"who"));
            assert_eq!(server.origin(), expected);
            server.send(b"you");
            assert_eq!(client.join().expect("join"), b"you");
        }
    }

    #[test]
    fn a_unix_socket_that_cannot_be_made_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").expect("file");
        let mut server = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let err = server.listen_on_unix_socket(&file.join("head.sock")).expect_err("a file is no directory");
        assert!(err.to_string().contains("a-file/head.sock"), "{err}");
        // Nor is a file that is not a socket replaced.
        let err = server.listen_on_unix_socket(&file).expect_err("a regular file is in the way");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(std::fs::metadata(&file).expect("still there").is_file());
    }

    #[test]
    fn a_unix_socket_in_use_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head.sock");
        let mut first = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let unix = first.listen_on_unix_socket(&path).expect("unix socket");
        let mut second = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let err = second.listen_on_unix_socket(&path).expect_err("the first still listens");
        assert!(err.to_string().contains("another process is listening"), "{err}");
        // The first still has its clients.
        let stop = echo(first);
        let policy = RetryPolicy::new(Duration::from_secs(2), 1);
        let mut client = Requester::new(&unix, policy, "t", Credentials::None).expect("endpoint");
        assert_eq!(client.request_bytes(b"a").expect("reply"), b"echo:a");
        stop();
        // A socket file nobody listens on is stale: the second takes its place.
        drop(client);
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).expect("listener");
        drop(stale);
        second.listen_on_unix_socket(&dir.path().join("stale.sock")).expect("a stale socket is replaced");
    }
}
