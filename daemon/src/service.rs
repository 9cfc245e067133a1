//! A role's inbox: the one place its main loop waits.
//!
//! Requests arrive on the role's REP socket, which the loop owns and answers itself: no thread
//! stands between them, so a request costs no hand-over (each hand-over between threads was a
//! wake-up on both sides: about a quarter of the head's CPU at 1,000 heartbeating nodes here).
//! Events from the role's other threads (supervisor exits, the head link, failed deliveries)
//! come through an [`EventSender`]: a channel whose every send also rings an eventfd that the same
//! wait watches. Each request passes the role's [`Gate`], which decides who sent it (the cluster
//! key, MUNGE, or the kernel's word on a Unix socket's peer); bytes that are not a valid message
//! or whose seal or credential fails are answered right here with an error reply, so the loop only
//! ever sees well-formed requests from a proven (or plainly anonymous) sender, and a REQ peer
//! always gets exactly one reply, sealed as its request was.

use cm_auth::{AuthError, Gate, Identity, ReplySeal};
use cm_common::protocol::{self, ErrorCode, ErrorReply, Reply};
use cm_transport::{Incoming, Responder};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Encodes a reply body; an error reply's body decodes as any `Reply<T>`.
pub fn body_bytes<T: serde::Serialize>(reply: &Reply<T>) -> Vec<u8> {
    protocol::encode_body(reply).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a reply");
        let error: Reply<()> = Err(ErrorReply::new(ErrorCode::Internal, format!("cannot encode the reply: {e}")));
        // Encoding a plain struct cannot fail; an empty body is the last resort if it ever does.
        protocol::encode_body(&error).unwrap_or_default()
    })
}

/// A request let in, with who proved to send it.
pub struct Request<Req> {
    pub identity: Identity,
    pub body: Req,
}

/// What the loop is given next.
pub enum Next<Req, E> {
    /// A request; answer it with [`Inbox::reply`] before asking for the next thing.
    Request(Request<Req>),
    Event(E),
}

/// Sends events to a loop's [`Inbox`] from any thread.
pub struct EventSender<E> {
    sender: Sender<E>,
    bell: Arc<EventFd>,
}

impl<E> Clone for EventSender<E> {
    fn clone(&self) -> Self {
        EventSender { sender: self.sender.clone(), bell: self.bell.clone() }
    }
}

impl<E> EventSender<E> {
    /// Queues `event` and wakes the loop; false if the loop has ended.
    pub fn send(&self, event: E) -> bool {
        if self.sender.send(event).is_err() {
            return false;
        }
        // Only fails if the counter would overflow, in which case the loop is awake anyway.
        let _ = self.bell.write(1);
        true
    }
}

/// A request left to be answered later ([`Inbox::defer`]), and how its reply is to be sealed.
pub struct Later {
    seal: ReplySeal,
    deferred: cm_transport::Deferred,
}

/// The requests and events of one role's loop.
pub struct Inbox<Req, E> {
    responder: Responder,
    events: Receiver<E>,
    bell: Arc<EventFd>,
    /// This daemon's name, the sender of its replies.
    me: String,
    /// Who may send what: the cluster key, MUNGE, the kernel's word on a Unix socket's peer.
    gate: Gate,
    /// How the request handed out last is to be answered; `None` once it has been.
    owes_reply: Option<ReplySeal>,
    /// The last thing handed out was an event: when both wait, a request goes next.
    event_last: bool,
    _requests: PhantomData<fn() -> Req>,
}

impl<Req: DeserializeOwned, E> Inbox<Req, E> {
    /// An inbox answering `responder`, and the sender its loop's other threads use.
    pub fn new(responder: Responder, me: String, gate: Gate) -> std::io::Result<(Self, EventSender<E>)> {
        let bell = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
        let (sender, events) = channel();
        let inbox = Inbox {
            responder,
            events,
            bell: bell.clone(),
            me,
            gate,
            owes_reply: None,
            event_last: false,
            _requests: PhantomData,
        };
        Ok((inbox, EventSender { sender, bell }))
    }

    /// The next event or request, waiting up to `timeout`; `None` if nothing came. When both
    /// wait they take turns, so a stream of either cannot hold up the other.
    pub fn next(&mut self, timeout: Duration) -> cm_common::Result<Option<Next<Req, E>>> {
        if self.owes_reply.is_some() {
            let dropped: Reply<()> = Err(ErrorReply::new(ErrorCode::Internal, "the daemon dropped the request"));
            self.reply(&dropped);
        }
        let deadline = Instant::now() + timeout;
        loop {
            // After an event, a waiting request goes first.
            if !self.event_last {
                if let Some(event) = self.try_event() {
                    return Ok(Some(event));
                }
            }
            if let Some(request) = self.try_request()? {
                self.event_last = false;
                return Ok(Some(Next::Request(request)));
            }
            if let Some(event) = self.try_event() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.responder.wait(Some(self.bell.as_fd()), left)?;
            // Reset the bell before looking at the channel again, so no send is slept through:
            // a send after this read rings it anew.
            let _ = self.bell.read();
        }
    }

    fn try_event(&mut self) -> Option<Next<Req, E>> {
        // Senders live as long as the threads that use them; none left is not an error.
        let event = self.events.try_recv().ok()?;
        self.event_last = true;
        Some(Next::Event(event))
    }

    /// A well-formed request already received, if any; refused ones get their error reply here.
    fn try_request(&mut self) -> cm_common::Result<Option<Request<Req>>> {
        while let Some(incoming) = self.responder.try_recv()? {
            if let Some(request) = self.admit(incoming) {
                return Ok(Some(request));
            }
        }
        Ok(None)
    }

    /// Leaves the request [`Inbox::next`] handed out last unanswered, as a node cut off from the
    /// network would: the sender's deadline runs out.
    pub fn forget(&mut self) {
        self.owes_reply = None;
    }

    /// Leaves the request [`Inbox::next`] handed out last to be answered later, with
    /// [`Inbox::reply_later`]; other requests are taken meanwhile.
    pub fn defer(&mut self) -> Option<Later> {
        let seal = self.owes_reply.take()?;
        Some(Later { seal, deferred: self.responder.defer()? })
    }

    /// Answers a request left for later.
    pub fn reply_later(&mut self, later: Later, body: &[u8]) {
        self.responder.send_later(later.deferred, &later.seal.reply(&self.me, body));
    }

    /// Whether the sender of a request left for later is still there to be answered.
    pub fn still_waiting(&self, later: &Later) -> bool {
        self.responder.is_connected(&later.deferred)
    }

    /// Answers the request [`Inbox::next`] handed out last.
    pub fn reply<T: serde::Serialize>(&mut self, reply: &Reply<T>) {
        self.reply_body(&body_bytes(reply));
    }

    /// Answers the request [`Inbox::next`] handed out last with an encoded reply body, sealed as
    /// its request was.
    pub fn reply_body(&mut self, body: &[u8]) {
        if let Some(seal) = self.owes_reply.take() {
            self.responder.send(&seal.reply(&self.me, body));
        }
    }

    /// A well-formed request whose sender is proven (or anonymous), or `None` once a refused
    /// one has had its error reply.
    fn admit(&mut self, incoming: Incoming) -> Option<Request<Req>> {
        let bytes = match incoming {
            Incoming::Message(bytes) => bytes,
            Incoming::Malformed(why) => {
                tracing::warn!(%why, "refused a malformed request");
                return self.refuse(ErrorReply::new(ErrorCode::BadRequest, why));
            }
        };
        let envelope = match protocol::decode_envelope(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                let code = match e {
                    cm_common::Error::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                    _ => ErrorCode::BadRequest,
                };
                tracing::warn!(error = %e, len = bytes.len(), "refused an undecodable request");
                return self.refuse(ErrorReply::new(code, e.to_string()));
            }
        };
        let origin = self.responder.origin();
        let admitted = match self.gate.admit(envelope, origin) {
            Ok(admitted) => admitted,
            Err(e) => {
                tracing::warn!(error = %e, ?origin, "refused an unauthenticated request");
                let code = match e {
                    AuthError::MungedUnreachable(_) => ErrorCode::Unavailable,
                    _ => ErrorCode::Unauthenticated,
                };
                return self.refuse(ErrorReply::new(code, e.to_string()));
            }
        };
        self.owes_reply = Some(admitted.reply);
        match protocol::decode_body::<Req>(&admitted.body) {
            Ok(body) => Some(Request { identity: admitted.identity, body }),
            Err(e) => {
                tracing::warn!(error = %e, sender = %admitted.sender, "refused an undecodable request");
                let refusal: Reply<()> = Err(ErrorReply::new(ErrorCode::BadRequest, e.to_string()));
                self.reply(&refusal);
                None
            }
        }
    }

    /// Answers a request refused before it was let in, unsealed.
    fn refuse(&mut self, error: ErrorReply) -> Option<Request<Req>> {
        self.owes_reply = Some(ReplySeal::Plain);
        let refusal: Reply<()> = Err(error);
        self.reply(&refusal);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::protocol::{ClientRequest, ClientResponse, FetchNodes, HeadRequest, NodesReply};
    use cm_transport::{Requester, RetryPolicy};

    type TestInbox = Inbox<HeadRequest, &'static str>;

    fn inbox() -> (TestInbox, EventSender<&'static str>, Requester) {
        let responder = Responder::bind("127.0.0.1:0", 1 << 20).expect("bind");
        let policy = RetryPolicy::new(Duration::from_secs(5), 0);
        let key = Arc::new(cm_auth::ClusterKey::ephemeral().expect("key"));
        let sealed = cm_auth::Credentials::Sealed { key: key.clone(), recipient: cm_auth::credentials::HEAD.into() };
        let client = Requester::new(responder.endpoint(), policy, "test", sealed).expect("endpoint");
        let (inbox, events) = Inbox::new(responder, "d".into(), Gate::head(key)).expect("inbox");
        (inbox, events, client)
    }

    /// Calls `FetchNodes` from another thread; the reply (or error reply) comes back on join.
    fn call_in_thread(mut client: Requester) -> std::thread::JoinHandle<Reply<ClientResponse>> {
        std::thread::spawn(move || {
            client
                .call::<HeadRequest, ClientResponse>(&HeadRequest::Client(ClientRequest::FetchNodes(FetchNodes {})))
                .expect("transport")
        })
    }

    #[test]
    fn an_event_from_another_thread_wakes_the_loop() {
        let (mut inbox, events, _client) = inbox();
        assert!(matches!(inbox.next(Duration::from_millis(20)), Ok(None)));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            events.send("exited")
        });
        let started = Instant::now();
        match inbox.next(Duration::from_secs(30)) {
            Ok(Some(Next::Event(event))) => assert_eq!(event, "exited"),
            _ => panic!("expected the event"),
        }
        // Woken by the bell, not by the end of the wait.
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(sender.join().expect("join"));
    }

    #[test]
    fn requests_reach_the_loop_and_get_its_reply() {
        let (mut inbox, _events, client) = inbox();
        let caller = call_in_thread(client);
        match inbox.next(Duration::from_secs(10)) {
            Ok(Some(Next::Request(request))) => {
                assert_eq!(request.identity, Identity::Daemon("test".into()));
                assert!(matches!(request.body, HeadRequest::Client(ClientRequest::FetchNodes(_))));
            }
            _ => panic!("expected the request"),
        }
        let reply: Reply<ClientResponse> = Ok(ClientResponse::Nodes(NodesReply { nodes: vec![], partitions: vec![] }));
        inbox.reply(&reply);
        assert!(matches!(caller.join().expect("join"), Ok(ClientResponse::Nodes(_))));
    }

    #[test]
    fn events_and_requests_take_turns_when_both_wait() {
        let (mut inbox, events, client) = inbox();
        let caller = call_in_thread(client);
        // The request is in (waiting on the socket alone returns once it is), then three events.
        inbox.responder.wait(None, Duration::from_secs(10)).expect("wait");
        for event in ["a", "b", "c"] {
            assert!(events.send(event));
        }
        let mut order = vec![];
        while order.len() < 4 {
            match inbox.next(Duration::from_secs(10)) {
                Ok(Some(Next::Event(event))) => order.push(event.to_string()),
                Ok(Some(Next::Request(_))) => {
                    order.push("request".into());
                    inbox.reply(&Ok::<_, ErrorReply>(ClientResponse::Nodes(NodesReply {
                        nodes: vec![],
                        partitions: vec![],
                    })));
                }
                _ => panic!("expected an event or the request"),
            }
        }
        assert_eq!(order, ["a", "request", "b", "c"]);
        assert!(caller.join().expect("join").is_ok());
    }

    #[test]
    fn an_unanswered_request_gets_an_error_and_garbage_never_reaches_the_loop() {
        let (mut inbox, _events, client) = inbox();
        let caller = call_in_thread(client);
        assert!(matches!(inbox.next(Duration::from_secs(10)), Ok(Some(Next::Request(_)))));
        // The loop asks for more without answering: the caller still gets exactly one reply.
        let garbage = std::thread::spawn({
            let endpoint = inbox.responder.endpoint().to_string();
            move || {
                let policy = RetryPolicy::new(Duration::from_secs(5), 0);
                let mut raw = Requester::new(&endpoint, policy, "t", cm_auth::Credentials::None).expect("endpoint");
                raw.request_bytes(b"\xc1 not messagepack").expect("a reply")
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !garbage.is_finished() && Instant::now() < deadline {
            assert!(matches!(inbox.next(Duration::from_millis(50)), Ok(None)), "garbage reached the loop");
        }
        match caller.join().expect("join") {
            Err(e) => assert_eq!(e.code, ErrorCode::Internal, "{}", e.message),
            Ok(other) => panic!("expected an error reply, got {other:?}"),
        }
        let refusal = garbage.join().expect("join");
        let (_, reply): (_, Reply<()>) = protocol::decode(&refusal).expect("an error reply");
        assert!(matches!(reply, Err(ErrorReply { code: ErrorCode::BadRequest, .. })));
    }
}
