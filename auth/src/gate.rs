//! The receiving side: who a request is from, decided from what cannot be forged, and how its
//! reply is sealed. A sealed request opened with the cluster key is a daemon's; a request on a
//! Unix socket is the user's whom the kernel names; a MUNGE credential over TCP names its user
//! if it covers this very body; anything else is anonymous. Claims inside a body count for
//! nothing.

use crate::credentials::{body_digest, HEAD};
use crate::key::ClusterKey;
use crate::replay::ReplayGuard;
use crate::{associated_data, munge, now_ms, AuthError};
use cm_common::protocol::{encode_envelope, Auth, Envelope};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the gate stops asking a `munged` it could not reach. libmunge retries a socket that
/// refuses connections for about two seconds, which would stall the daemon's loop on every
/// request over TCP while `munged` is down; one request in this long pays for finding out.
const MUNGED_DOWN_PAUSE: Duration = Duration::from_secs(10);

/// Who sent a request, as proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A user, by uid: from the kernel (Unix socket) or MUNGE.
    User(u32),
    /// A daemon of this cluster (it holds the cluster key), by the name it sealed under.
    Daemon(String),
    /// Nobody proven: TCP without a credential.
    Anonymous,
}

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// TCP: the peer could be anyone on the network.
    Network,
    /// A Unix socket whose peer runs as `uid` (`SO_PEERCRED`).
    Local { uid: u32 },
}

/// How the reply to an admitted request is sealed.
#[derive(Clone)]
pub enum ReplySeal {
    Plain,
    /// Sealed as `me` (the name the request was sealed for) for `recipient` (its sender).
    Sealed {
        key: Arc<ClusterKey>,
        me: String,
        recipient: String,
        nonce: Vec<u8>,
    },
}

/// A request let in, with its body opened.
pub struct Admitted {
    pub identity: Identity,
    pub sender: String,
    pub body: Vec<u8>,
    pub reply: ReplySeal,
}

/// A daemon's check of what it receives.
pub struct Gate {
    key: Arc<ClusterKey>,
    /// The name daemons seal for when they write to us (`head`, or `node:ID`).
    me: String,
    /// Whether MUNGE credentials are taken (the head: users' tools over TCP).
    users: bool,
    guard: ReplayGuard,
    /// Until when `munged` is taken to be down, after it could not be reached.
    munged_down_until: Option<Instant>,
}

impl Gate {
    /// The head's gate: daemons and users.
    pub fn head(key: Arc<ClusterKey>) -> Gate {
        Gate { key, me: HEAD.to_string(), users: true, guard: ReplayGuard::default(), munged_down_until: None }
    }

    /// A compute node's gate: the head only.
    pub fn node(key: Arc<ClusterKey>, node: &str) -> Gate {
        Gate {
            key,
            me: crate::credentials::node_recipient(node),
            users: false,
            guard: ReplayGuard::default(),
            munged_down_until: None,
        }
    }

    /// Decides who sent `envelope`, which arrived from `origin`. An error is a request refused:
    /// its seal does not open, it is stale or replayed, or its MUNGE credential is refused.
    pub fn admit(&mut self, envelope: Envelope, origin: Origin) -> Result<Admitted, AuthError> {
        let Envelope { sender, auth, body, .. } = envelope;
        match (auth, origin) {
            (Auth::Sealed { at_ms, nonce }, _) => {
                let now = now_ms();
                self.guard.check_date(at_ms, now)?;
                let aad = associated_data("request", &sender, &self.me, at_ms, &[]);
                let body = self.key.open(&aad, &nonce, &body)?;
                self.guard.record(&nonce, now)?;
                let reply =
                    ReplySeal::Sealed { key: self.key.clone(), me: self.me.clone(), recipient: sender.clone(), nonce };
                Ok(Admitted { identity: Identity::Daemon(sender.clone()), sender, body, reply })
            }
            _ if !self.users => Err(AuthError::Refused(
                "this daemon takes requests only from the cluster's daemons (sealed with its cluster key)".into(),
            )),
            // The kernel's word beats any credential.
            (_, Origin::Local { uid }) => {
                Ok(Admitted { identity: Identity::User(uid), sender, body, reply: ReplySeal::Plain })
            }
            (Auth::Munge { credential }, Origin::Network) => {
                let decoded = self.check_munge(&credential, Instant::now(), munge::decode)?;
                if decoded.payload != body_digest(&body) {
                    return Err(AuthError::Refused("the MUNGE credential was made for another message".into()));
                }
                Ok(Admitted { identity: Identity::User(decoded.uid), sender, body, reply: ReplySeal::Plain })
            }
            (Auth::None, Origin::Network) => {
                Ok(Admitted { identity: Identity::Anonymous, sender, body, reply: ReplySeal::Plain })
            }
        }
    }
}

impl Gate {
    /// `decode(credential)`, unless `munged` was found unreachable less than
    /// [`MUNGED_DOWN_PAUSE`] ago: then the request is refused at once.
    fn check_munge(
        &mut self,
        credential: &str,
        now: Instant,
        decode: impl FnOnce(&str) -> Result<munge::Decoded, AuthError>,
    ) -> Result<munge::Decoded, AuthError> {
        if self.munged_down_until.is_some_and(|until| now < until) {
            return Err(AuthError::MungedUnreachable(
                "the head cannot check MUNGE credentials now: its munged is not answering".into(),
            ));
        }
        let decoded = decode(credential);
        self.munged_down_until = match &decoded {
            Err(AuthError::MungedUnreachable(_)) => Some(now + MUNGED_DOWN_PAUSE),
            _ => None,
        };
        decoded
    }
}

impl ReplySeal {
    /// The wire bytes of a reply with `body`, from the daemon named `sender` in logs. Sealing
    /// cannot fail but for want of random bytes; the reply then goes unsealed, which the
    /// requester takes as an error at most.
    pub fn reply(&self, sender: &str, body: &[u8]) -> Vec<u8> {
        let sealed = match self {
            ReplySeal::Plain => None,
            ReplySeal::Sealed { key, me, recipient, nonce } => {
                let at_ms = now_ms();
                let aad = associated_data("reply", me, recipient, at_ms, nonce);
                key.seal(&aad, body)
                    .ok()
                    .map(|(reply_nonce, sealed)| (Auth::Sealed { at_ms, nonce: reply_nonce.to_vec() }, sealed))
            }
        };
        let encoded = match &sealed {
            Some((auth, sealed)) => encode_envelope(sender, auth, sealed),
            None => encode_envelope(sender, &Auth::None, body),
        };
        encoded.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{node_recipient, Credentials, Opened};
    use cm_common::protocol::decode_envelope;

    fn key() -> Arc<ClusterKey> {
        Arc::new(ClusterKey::ephemeral().expect("key"))
    }

    fn sealed_to(key: &Arc<ClusterKey>, recipient: &str, body: &[u8]) -> (Vec<u8>, crate::ReplyCheck) {
        Credentials::Sealed { key: key.clone(), recipient: recipient.to_string() }.request("c1", body).expect("seal")
    }

    #[test]
    fn a_sealed_request_is_a_daemons_and_its_sealed_reply_opens_for_the_sender_only() {
        let key = key();
        let mut head = Gate::head(key.clone());
        let (bytes, check) = sealed_to(&key, HEAD, b"heartbeat");
        let admitted = head.admit(decode_envelope(&bytes).expect("envelope"), Origin::Network).expect("admitted");
        assert_eq!(admitted.identity, Identity::Daemon("c1".into()));
        assert_eq!(admitted.body, b"heartbeat");
        let reply = decode_envelope(&admitted.reply.reply("head-host", b"ack")).expect("reply");
        assert!(matches!(check.open(reply.clone()), Ok(Opened::Trusted(body)) if body == b"ack"));
        // The same reply does not pass for the answer to another request.
        let (_, other) = sealed_to(&key, HEAD, b"heartbeat");
        assert!(matches!(other.open(reply), Err(AuthError::BadSeal)));
    }

    #[test]
    fn a_replayed_a_foreign_an_altered_or_a_misdirected_request_is_refused() {
        let key = key();
        let mut head = Gate::head(key.clone());
        let (bytes, _) = sealed_to(&key, HEAD, b"report");
        head.admit(decode_envelope(&bytes).expect("envelope"), Origin::Network).expect("first");
        let again = head.admit(decode_envelope(&bytes).expect("envelope"), Origin::Network);
        assert!(matches!(again, Err(AuthError::Replayed)), "replay");

        let (foreign, _) = sealed_to(&self::key(), HEAD, b"report");
        assert!(matches!(head.admit(decode_envelope(&foreign).expect("e"), Origin::Network), Err(AuthError::BadSeal)));

        let (bytes, _) = sealed_to(&key, HEAD, b"report");
        let mut envelope = decode_envelope(&bytes).expect("envelope");
        envelope.sender = "c2".into();
        assert!(matches!(head.admit(envelope, Origin::Network), Err(AuthError::BadSeal)), "sender changed");

        // Sealed for node c1, sent to node c2 (or to the head).
        let (bytes, _) = sealed_to(&key, &node_recipient("c1"), b"start");
        let mut c2 = Gate::node(key.clone(), "c2");
        assert!(matches!(c2.admit(decode_envelope(&bytes).expect("e"), Origin::Network), Err(AuthError::BadSeal)));
        assert!(matches!(head.admit(decode_envelope(&bytes).expect("e"), Origin::Network), Err(AuthError::BadSeal)));
        let mut c1 = Gate::node(key, "c1");
        assert!(c1.admit(decode_envelope(&bytes).expect("e"), Origin::Network).is_ok());
    }

    #[test]
    fn users_are_named_by_the_kernel_on_a_unix_socket_and_are_anonymous_over_tcp_without_munge() {
        let mut head = Gate::head(key());
        let (bytes, _) = Credentials::None.request("cmrun@h", b"submit").expect("plain");
        let local = head.admit(decode_envelope(&bytes).expect("e"), Origin::Local { uid: 1000 }).expect("local");
        assert_eq!(local.identity, Identity::User(1000));
        let remote = head.admit(decode_envelope(&bytes).expect("e"), Origin::Network).expect("remote");
        assert_eq!(remote.identity, Identity::Anonymous);
    }

    #[test]
    fn an_unreachable_munged_is_asked_again_only_after_a_pause() {
        let mut head = Gate::head(key());
        let t0 = Instant::now();
        let mut asked = 0;
        let mut down = |_: &str| {
            asked += 1;
            Err(AuthError::MungedUnreachable("refused".into()))
        };
        assert!(head.check_munge("c", t0, &mut down).is_err());
        assert!(head.check_munge("c", t0 + Duration::from_secs(5), &mut down).is_err());
        assert_eq!(asked, 1, "not asked again within the pause");
        let up = |_: &str| Ok(munge::Decoded { uid: 7, gid: 7, payload: vec![] });
        assert_eq!(head.check_munge("c", t0 + MUNGED_DOWN_PAUSE, up).expect("asked again").uid, 7);
        let refused = |_: &str| Err(AuthError::Munge("replayed".into()));
        assert!(head.check_munge("c", t0 + MUNGED_DOWN_PAUSE, refused).is_err());
        assert!(head.check_munge("c", t0 + MUNGED_DOWN_PAUSE, up).is_ok(), "a refused credential pauses nothing");
    }

    #[test]
    fn a_compute_node_takes_nothing_but_sealed_requests() {
        let mut node = Gate::node(key(), "c1");
        let (bytes, _) = Credentials::None.request("x", b"start").expect("plain");
        for origin in [Origin::Network, Origin::Local { uid: 0 }] {
            assert!(matches!(node.admit(decode_envelope(&bytes).expect("e"), origin), Err(AuthError::Refused(_))));
        }
    }
}
