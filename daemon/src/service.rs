//! A role's inbox: the one place its main loop waits.
//!
//! Requests arrive on the role's REP socket, which the loop owns and answers itself: no thread
//! stands between them, so a request costs no hand-over (each hand-over between threads was a
//! wake-up on both sides: about a quarter of the head's CPU at 1,000 heartbeating nodes here).
//! Events from the role's other threads (supervisor exits, the head link, failed deliveries)
//! come through an [`EventSender`]: a channel whose every send also rings an eventfd that the same
//! wait watches. Bytes that are not a valid message are answered right here with an error reply,
//! so the loop only ever sees well-formed requests, and a REQ peer always gets exactly one reply.

use cm_common::protocol::{self, Credential, Envelope, ErrorCode, ErrorReply, Reply};
use cm_transport::{Incoming, Responder};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Encodes an error reply; decodable as any `Reply<T>`.
pub fn error_bytes(sender: &str, error: ErrorReply) -> Vec<u8> {
    let reply: Reply<()> = Err(error);
    // Encoding a plain struct cannot fail; an empty frame is the last resort if it ever does.
    protocol::encode(sender, Credential { uid: 0 }, &reply).unwrap_or_default()
}

/// Encodes a reply to a request.
pub fn reply_bytes<T: serde::Serialize>(sender: &str, reply: &Reply<T>) -> Vec<u8> {
    protocol::encode(sender, Credential { uid: 0 }, reply).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a reply");
        error_bytes(sender, ErrorReply::new(ErrorCode::Internal, format!("cannot encode the reply: {e}")))
    })
}

/// What the loop is given next.
pub enum Next<Req, E> {
    /// A request; answer it with [`Inbox::reply`] before asking for the next thing.
    Request(Envelope<Req>),
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

/// The requests and events of one role's loop.
pub struct Inbox<Req, E> {
    responder: Responder,
    events: Receiver<E>,
    bell: Arc<EventFd>,
    /// This daemon's name, the sender of its replies.
    me: String,
    /// A request was handed out and not answered yet.
    owes_reply: bool,
    /// The last thing handed out was an event: when both wait, a request goes next.
    event_last: bool,
    _requests: PhantomData<fn() -> Req>,
}

impl<Req: DeserializeOwned, E> Inbox<Req, E> {
    /// An inbox answering `responder`, and the sender its loop's other threads use.
    pub fn new(responder: Responder, me: String) -> std::io::Result<(Self, EventSender<E>)> {
        let bell = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
        let (sender, events) = channel();
        let inbox = Inbox {
            responder,
            events,
            bell: bell.clone(),
            me,
            owes_reply: false,
            event_last: false,
            _requests: PhantomData,
        };
        Ok((inbox, EventSender { sender, bell }))
    }

    /// The next event or request, waiting up to `timeout`; `None` if nothing came. When both
    /// wait they take turns, so a stream of either cannot hold up the other.
    pub fn next(&mut self, timeout: Duration) -> cm_common::Result<Option<Next<Req, E>>> {
        if self.owes_reply {
            self.reply(&error_bytes(&self.me, ErrorReply::new(ErrorCode::Internal, "the daemon dropped the request")));
        }
        let deadline = Instant::now() + timeout;
        loop {
            // After an event, a waiting request goes first.
            if !self.event_last {
                if let Some(event) = self.try_event() {
                    return Ok(Some(event));
                }
            }
            if let Some(envelope) = self.try_request()? {
                self.event_last = false;
                self.owes_reply = true;
                return Ok(Some(Next::Request(envelope)));
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
    fn try_request(&mut self) -> cm_common::Result<Option<Envelope<Req>>> {
        while let Some(incoming) = self.responder.try_recv()? {
            if let Some(envelope) = self.decode(incoming) {
                return Ok(Some(envelope));
            }
        }
        Ok(None)
    }

    /// Answers the request [`Inbox::next`] handed out last.
    pub fn reply(&mut self, bytes: &[u8]) {
        if std::mem::take(&mut self.owes_reply) {
            self.responder.send(bytes);
        }
    }

    /// A well-formed request, or `None` once a refused one has had its error reply.
    fn decode(&mut self, incoming: Incoming) -> Option<Envelope<Req>> {
        let refusal = match incoming {
            Incoming::Message(bytes) => match protocol::decode::<Req>(&bytes) {
                Ok(envelope) => return Some(envelope),
                Err(e) => {
                    let code = match e {
                        cm_common::Error::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                        _ => ErrorCode::BadRequest,
                    };
                    tracing::warn!(error = %e, len = bytes.len(), "refused an undecodable request");
                    ErrorReply::new(code, e.to_string())
                }
            },
            Incoming::Malformed(why) => {
                tracing::warn!(%why, "refused a malformed request");
                ErrorReply::new(ErrorCode::BadRequest, why)
            }
        };
        self.responder.send(&error_bytes(&self.me, refusal));
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
        let client = Requester::new(responder.endpoint(), policy, "test", Credential { uid: 7 }).expect("endpoint");
        let (inbox, events) = Inbox::new(responder, "d".into()).expect("inbox");
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
            Ok(Some(Next::Request(envelope))) => {
                assert_eq!(envelope.credential.uid, 7);
                assert!(matches!(envelope.body, HeadRequest::Client(ClientRequest::FetchNodes(_))));
            }
            _ => panic!("expected the request"),
        }
        let reply: Reply<ClientResponse> = Ok(ClientResponse::Nodes(NodesReply { nodes: vec![] }));
        inbox.reply(&reply_bytes("d", &reply));
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
                    inbox.reply(&reply_bytes(
                        "d",
                        &Ok::<_, ErrorReply>(ClientResponse::Nodes(NodesReply { nodes: vec![] })),
                    ));
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
                let mut raw = Requester::new(&endpoint, policy, "t", Credential { uid: 0 }).expect("endpoint");
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
        let envelope: Envelope<Reply<()>> = protocol::decode(&refusal).expect("an error reply");
        assert!(matches!(envelope.body, Err(ErrorReply { code: ErrorCode::BadRequest, .. })));
    }
}
