//! [`Requester`]: a REQ client on libzmq, for the daemons. A compute daemon keeps one to its head
//! and the head one per compute node, each for as long as the daemon runs, so libzmq's context
//! and its I/O thread are paid once. (The command-line tools use [`crate::ZmtpRequester`].)

use crate::{decode_reply, tcp_endpoint, with_retries, Attempt, RetryPolicy};
use cm_common::protocol::{self, Credential, Reply};
use cm_common::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A REQ client for one peer, with deadlines and retries.
pub struct Requester {
    ctx: zmq::Context,
    endpoint: String,
    socket: Option<zmq::Socket>,
    policy: RetryPolicy,
    sender: String,
    credential: Credential,
}

impl Requester {
    pub fn new(ctx: &zmq::Context, address: &str, policy: RetryPolicy, sender: &str, credential: Credential) -> Self {
        Requester {
            ctx: ctx.clone(),
            endpoint: tcp_endpoint(address),
            socket: None,
            policy,
            sender: sender.to_string(),
            credential,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `body` and decodes the reply; transport and decoding failures are the outer error,
    /// the peer's error reply the inner one.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(&mut self, body: &Req) -> Result<Reply<Resp>> {
        let request = protocol::encode(&self.sender, self.credential, body)?;
        decode_reply(&self.request_bytes(&request)?)
    }

    /// Sends raw bytes and returns the raw reply, retrying with fresh sockets on timeouts.
    pub fn request_bytes(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let endpoint = self.endpoint.clone();
        with_retries(&endpoint, self.policy, || {
            let outcome = self.attempt(request);
            if !matches!(outcome, Ok(Attempt::Reply(_))) {
                // A REQ socket that sent without receiving is stuck: close it and start afresh.
                self.socket = None;
            }
            // libzmq's errors here (a bad endpoint, too many open files) are retried as a
            // timeout is: the caller learns of them as an unreachable peer, after the retries.
            Ok(outcome.unwrap_or_else(|e| Attempt::Retry(e.to_string())))
        })
    }

    fn attempt(&mut self, request: &[u8]) -> Result<Attempt> {
        let zmq_err = |e: zmq::Error| Error::Network { endpoint: self.endpoint.clone(), reason: e.to_string() };
        if self.socket.is_none() {
            let socket = self.ctx.socket(zmq::REQ).map_err(zmq_err)?;
            socket.set_linger(0).map_err(zmq_err)?;
            socket.connect(&self.endpoint).map_err(zmq_err)?;
            self.socket = Some(socket);
        }
        let Some(socket) = self.socket.as_ref() else {
            return Ok(Attempt::Retry("no socket".into()));
        };
        socket.send(request, 0).map_err(zmq_err)?;
        let timeout_ms = i64::try_from(self.policy.timeout.as_millis()).unwrap_or(i64::MAX);
        if socket.poll(zmq::POLLIN, timeout_ms).map_err(zmq_err)? == 0 {
            return Ok(Attempt::Retry("timed out".into()));
        }
        let mut parts = socket.recv_multipart(0).map_err(zmq_err)?;
        if parts.len() != 1 {
            return Err(Error::Decode(format!("reply has {} frames, expected 1", parts.len())));
        }
        Ok(parts.pop().map_or_else(|| Attempt::Retry("no reply frame".into()), Attempt::Reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Responder;
    use std::time::{Duration, Instant};

    #[test]
    fn a_silent_peer_costs_bounded_time_and_reports_unreachable() {
        let ctx = zmq::Context::new();
        // Bind a REP socket that never answers.
        let silent = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let policy =
            RetryPolicy { timeout: Duration::from_millis(100), retries: 2, backoff: Duration::from_millis(10) };
        let mut client = Requester::new(&ctx, silent.endpoint(), policy, "t", Credential { uid: 0 });
        let started = Instant::now();
        let err = client.request_bytes(b"ping").expect_err("no reply must be an error");
        assert!(matches!(err, Error::Unreachable { attempts: 3, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
