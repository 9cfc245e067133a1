//! The bridge between a role's REP socket and its main loop.
//!
//! The socket lives on its own thread: it decodes each request, hands it to the main loop through
//! a channel with a one-shot reply slot, waits for the encoded reply and sends it. Bytes that are
//! not a valid message are answered right here with an error reply, so the main loop only ever
//! sees well-formed requests and a REQ peer always gets exactly one reply.

use cm_common::protocol::{self, Credential, Envelope, ErrorCode, ErrorReply, Reply};
use cm_transport::{Incoming, Responder};
use serde::de::DeserializeOwned;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where the main loop puts the encoded reply to one request.
pub type ReplySlot = SyncSender<Vec<u8>>;

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

/// Serves `responder` on a new thread, sending each decoded request into `events` as
/// `to_event(envelope, reply_slot)`.
pub fn spawn<Req, E>(
    name: &str,
    responder: Responder,
    me: String,
    shutdown: Arc<AtomicBool>,
    events: Sender<E>,
    to_event: impl Fn(Envelope<Req>, ReplySlot) -> E + Send + 'static,
) -> std::io::Result<JoinHandle<()>>
where
    Req: DeserializeOwned + 'static,
    E: Send + 'static,
{
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let result = responder.serve(&shutdown, |incoming| {
            let bytes = match incoming {
                Incoming::Message(bytes) => bytes,
                Incoming::Malformed(why) => {
                    tracing::warn!(%why, "refused a malformed request");
                    return error_bytes(&me, ErrorReply::new(ErrorCode::BadRequest, why));
                }
            };
            let envelope = match protocol::decode::<Req>(bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    let code = match e {
                        cm_common::Error::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                        _ => ErrorCode::BadRequest,
                    };
                    tracing::warn!(error = %e, len = bytes.len(), "refused an undecodable request");
                    return error_bytes(&me, ErrorReply::new(code, e.to_string()));
                }
            };
            let (slot, reply) = sync_channel(1);
            if events.send(to_event(envelope, slot)).is_err() {
                return error_bytes(&me, ErrorReply::new(ErrorCode::Unavailable, "the daemon is shutting down"));
            }
            reply.recv().unwrap_or_else(|_| {
                error_bytes(&me, ErrorReply::new(ErrorCode::Internal, "the daemon dropped the request"))
            })
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "the request socket failed");
        }
    })
}
