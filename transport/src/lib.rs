//! cm-transport: ZeroMQ REQ/REP with deadlines, the only place cm touches sockets.
//!
//! - [`Requester`] ([`requester`]) is a REQ client for everyone that asks: the tools, a compute
//!   daemon's link to its head, the head's sender to each compute node. It speaks the ZeroMQ wire
//!   protocol (ZMTP 3.0) on one blocking socket in the caller's thread. It is a "lazy pirate" client: each request has a deadline; a request that timed
//!   out is sent again on a fresh connection (a REQ peer that sent cannot send again before it
//!   hears back) after a backoff. After the last attempt the peer is reported unreachable, so a
//!   silent peer costs the caller a bounded time and never wedges it.
//! - [`Responder`] ([`responder`]) is a REP socket with a message size limit, answered one
//!   request at a time by the loop that owns it, which can wait on it and on a descriptor of its
//!   own at once, and which does the connections' I/O itself (`epoll`, no I/O thread).
//!   Malformed messages (several frames) are handed over as such for an error reply, so a REQ
//!   peer always gets exactly one reply.
//! - [`zmtp`] is the wire protocol both speak, ZMTP 3.0 with the NULL mechanism: cm needs no
//!   libzmq, and any ZeroMQ REQ or REP peer (libzmq, pyzmq) can talk to cm.

pub mod requester;
pub mod responder;
pub mod zmtp;

pub use requester::Requester;
pub use responder::{Deferred, Incoming, Responder};

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
            let mut server = server;
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
