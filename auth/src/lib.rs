//! cm-auth: who sent a message, proven rather than claimed.
//!
//! - A user's tool on the head's host speaks over a Unix socket, whose peer the kernel names
//!   (`SO_PEERCRED`, read by the transport); over TCP it attaches a MUNGE credential ([`munge`]),
//!   as SLURM's tools do, covering the message's body.
//! - Daemons seal every message to each other with the cluster key ([`key`]): a file only the
//!   daemons' user can read, used with XChaCha20-Poly1305, so a message is authentic, private
//!   (job environments cross the network) and, with its time and nonce ([`replay`]), used once.
//! - [`credentials`] is the sending side (what a requester attaches, and how it checks the reply);
//!   [`gate`] the receiving side (who a request is from, and how its reply is sealed).

pub mod credentials;
pub mod gate;
pub mod key;
pub mod munge;
pub mod replay;

pub use credentials::{Credentials, ReplyCheck};
pub use gate::{Admitted, Gate, Identity, Origin, ReplySeal};
pub use key::ClusterKey;

/// Why a message was not taken as authentic.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The cluster key file is missing, unreadable, malformed or readable by others.
    #[error("{0}")]
    Key(String),
    /// A MUNGE credential could not be made or was refused.
    #[error("{0}")]
    Munge(String),
    /// The local `munged` could not be reached.
    #[error("{0}")]
    MungedUnreachable(String),
    /// A sealed message did not open with our key: another cluster's, or tampered with.
    #[error("the message is not sealed with this cluster's key (another cluster's key, or altered on the way)")]
    BadSeal,
    /// A sealed message older (or newer) than clocks can explain.
    #[error("the message was sealed {0} s away from this host's clock; check that the cluster's clocks agree (NTP)")]
    Stale(i64),
    /// A sealed message seen before.
    #[error("the message was already received once (a replay)")]
    Replayed,
    /// The message carries no credential this receiver takes.
    #[error("{0}")]
    Refused(String),
    /// A reply from a daemon that is not sealed for the request it answers.
    #[error("the reply is not sealed with the cluster key for this request")]
    UnsealedReply,
}

/// Milliseconds since the Unix epoch, the clock seals are dated by.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The bytes a seal covers besides the body: what the message is (a request or the reply to
/// one), who sealed it for whom, and when; each field length-prefixed so no two differ alike.
fn associated_data(kind: &str, sender: &str, recipient: &str, at_ms: u64, request_nonce: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + sender.len() + recipient.len());
    aad.extend_from_slice(&cm_common::protocol::PROTOCOL_VERSION.to_be_bytes());
    for field in [kind.as_bytes(), sender.as_bytes(), recipient.as_bytes(), &at_ms.to_be_bytes(), request_nonce] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}
