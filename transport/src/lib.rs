//! cm-transport: ZeroMQ REQ/REP with deadlines, the only place cm touches sockets.
//!
//! - [`Requester`] ([`requester`]) is a REQ client on libzmq, for the daemons, which live long
//!   and talk to many peers.
//! - [`ZmtpRequester`] ([`zmtp`]) is a REQ client that speaks the ZeroMQ wire protocol itself on
//!   one blocking socket, without libzmq's threads, for the command-line tools, which make a
//!   request or two and exit.
//! - [`Responder`] ([`responder`]) is a REP socket with a message size limit, answered one request
//!   at a time by the loop that owns it, which can wait on it and on a descriptor of its own at
//!   once. Malformed messages (several frames) are handed over as such for an error reply, so a
//!   REQ peer always gets exactly one reply.
//!
//! Both requesters are "lazy pirate" clients ([`with_retries`]): each request has a deadline; a
//! request that timed out is sent again from a fresh connection (a REQ peer that sent cannot send
//! again before it hears back) after a backoff. After the last attempt the peer is reported
//! unreachable, so a silent peer costs the caller a bounded time and never wedges it.

pub mod requester;
pub mod responder;
pub mod zmtp;

pub use requester::Requester;
pub use responder::{Incoming, Responder};
pub use zmtp::ZmtpRequester;

use cm_common::protocol::{self, Envelope, Reply};
use cm_common::{Error, Result};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Turns `HOST:PORT` into a ZeroMQ TCP endpoint; endpoints with a scheme pass through.
pub fn tcp_endpoint(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("tcp://{address}")
    }
}

/// How a requester waits and retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// How long one attempt waits for the reply.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// First pause between attempts; doubles each time, capped at `timeout`.
    pub backoff: Duration,
}

impl RetryPolicy {
    pub fn new(timeout: Duration, retries: u32) -> Self {
        RetryPolicy { timeout, retries, backoff: Duration::from_millis(50) }
    }
}

/// How one attempt at a request ended, short of an error that retrying cannot mend.
pub(crate) enum Attempt {
    Reply(Vec<u8>),
    /// No reply: the deadline passed, or the connection failed (why, for the debug log). The
    /// attempt has dropped its connection, so the next one starts afresh.
    Retry(String),
}

/// Runs `attempt` until it brings a reply, at most `1 + policy.retries` times, pausing between
/// attempts (the pause doubles each time). An `Err` from `attempt` ends it at once.
pub(crate) fn with_retries(
    endpoint: &str,
    policy: RetryPolicy,
    mut attempt: impl FnMut() -> Result<Attempt>,
) -> Result<Vec<u8>> {
    let mut backoff = policy.backoff;
    let attempts = policy.retries.saturating_add(1);
    for number in 1..=attempts {
        match attempt()? {
            Attempt::Reply(reply) => return Ok(reply),
            Attempt::Retry(why) => tracing::debug!(%endpoint, attempt = number, %why, "no reply"),
        }
        if number < attempts {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(policy.timeout);
        }
    }
    Err(Error::Unreachable {
        endpoint: endpoint.to_string(),
        attempts,
        timeout_ms: u64::try_from(policy.timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Opens a reply: transport and decoding failures are the outer error, the peer's error reply
/// the inner one.
pub(crate) fn decode_reply<Resp: DeserializeOwned>(bytes: &[u8]) -> Result<Reply<Resp>> {
    let envelope: Envelope<Reply<Resp>> = protocol::decode(bytes)?;
    Ok(envelope.body)
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::{Incoming, Responder};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Serves `server` on a thread, answering `echo:` and the request, until the returned
    /// function is called; that stops the server and checks that it ended well.
    pub fn echo(server: Responder) -> impl FnOnce() {
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            server.serve(&stop, |incoming| match incoming {
                Incoming::Message(m) => [b"echo:".as_slice(), &m].concat(),
                Incoming::Malformed(why) => why.into_bytes(),
            })
        });
        move || {
            shutdown.store(true, Ordering::Relaxed);
            thread.join().expect("join").expect("serve");
        }
    }
}
