//! The sending side: what a request carries to prove its sender, made afresh for every attempt
//! (a retried request is a new message, so the receiver's replay guard never refuses a retry),
//! and how its reply is checked.

use crate::key::ClusterKey;
use crate::{associated_data, munge, now_ms, AuthError};
use cm_common::protocol::{encode_envelope, Auth, Envelope};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What a requester attaches to each request.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Nothing: over a Unix socket the kernel tells the receiver who we are.
    None,
    /// A MUNGE credential covering the body: a user's tool over TCP.
    Munge,
    /// Sealed with the cluster key for `recipient` (`head`, or `node:ID`): a daemon.
    Sealed { key: Arc<ClusterKey>, recipient: String },
}

/// How the reply to one request is to be checked.
pub enum ReplyCheck {
    /// Taken as it comes: the request was not sealed.
    Plain,
    /// It must be sealed by `recipient` for the request with this nonce; only an error reply may
    /// come unsealed (a daemon that could not open the request cannot seal its answer).
    Sealed { key: Arc<ClusterKey>, sender: String, recipient: String, nonce: Vec<u8> },
}

/// The recipient name of the head, for sealing.
pub const HEAD: &str = "head";

/// The recipient name of a compute node, for sealing.
pub fn node_recipient(node: &str) -> String {
    format!("node:{node}")
}

/// The SHA-256 of a body, which a MUNGE credential carries to bind itself to that body.
pub fn body_digest(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

impl Credentials {
    /// The wire bytes of a request from `sender` with `body`, and how to check its reply.
    pub fn request(&self, sender: &str, body: &[u8]) -> Result<(Vec<u8>, ReplyCheck), AuthError> {
        let encode = |auth: &Auth, body: &[u8]| {
            encode_envelope(sender, auth, body).map_err(|e| AuthError::Refused(e.to_string()))
        };
        match self {
            Credentials::None => Ok((encode(&Auth::None, body)?, ReplyCheck::Plain)),
            Credentials::Munge => {
                let credential = munge::encode(&body_digest(body))?;
                Ok((encode(&Auth::Munge { credential }, body)?, ReplyCheck::Plain))
            }
            Credentials::Sealed { key, recipient } => {
                let at_ms = now_ms();
                let aad = associated_data("request", sender, recipient, at_ms, &[]);
                let (nonce, sealed) = key.seal(&aad, body)?;
                let bytes = encode(&Auth::Sealed { at_ms, nonce: nonce.to_vec() }, &sealed)?;
                let check = ReplyCheck::Sealed {
                    key: key.clone(),
                    sender: sender.to_string(),
                    recipient: recipient.clone(),
                    nonce: nonce.to_vec(),
                };
                Ok((bytes, check))
            }
        }
    }
}

/// A reply's body, and whether it was proven to come from the peer we sealed the request for.
pub enum Opened {
    Trusted(Vec<u8>),
    /// Unsealed although the request was sealed: believable only as an error reply.
    ErrorOnly(Vec<u8>),
}

impl ReplyCheck {
    /// Opens the reply in `envelope`.
    pub fn open(&self, envelope: Envelope) -> Result<Opened, AuthError> {
        match (self, envelope.auth) {
            (ReplyCheck::Plain, _) => Ok(Opened::Trusted(envelope.body)),
            (ReplyCheck::Sealed { .. }, Auth::None) => Ok(Opened::ErrorOnly(envelope.body)),
            (ReplyCheck::Sealed { key, sender, recipient, nonce }, Auth::Sealed { at_ms, nonce: reply_nonce }) => {
                // The reply is sealed by the recipient for us, bound to our request's nonce.
                let aad = associated_data("reply", recipient, sender, at_ms, nonce);
                key.open(&aad, &reply_nonce, &envelope.body).map(Opened::Trusted)
            }
            (ReplyCheck::Sealed { .. }, Auth::Munge { .. }) => Err(AuthError::UnsealedReply),
        }
    }
}
