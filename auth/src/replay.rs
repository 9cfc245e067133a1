//! Refusing a sealed message seen before, or one too old to tell: each is dated and carries a
//! random nonce; a receiver takes a date within [`MAX_SKEW_MS`] of its clock and each nonce once,
//! remembering nonces for as long as their date would still pass.

use crate::key::NONCE_LEN;
use crate::AuthError;
use std::collections::{HashSet, VecDeque};

/// How far a seal's date may be from the receiver's clock: cluster clocks must agree this well.
pub const MAX_SKEW_MS: u64 = 60_000;

/// The nonces of the messages taken recently.
#[derive(Default)]
pub struct ReplayGuard {
    seen: HashSet<[u8; NONCE_LEN]>,
    /// When each nonce may be forgotten, in the order they came.
    expiry: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// Refuses a date too far from `now_ms`; the nonce is not recorded yet.
    pub fn check_date(&self, at_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        if at_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            let seconds = (i128::from(at_ms) - i128::from(now_ms)) / 1000;
            return Err(AuthError::Stale(i64::try_from(seconds).unwrap_or(i64::MAX)));
        }
        Ok(())
    }

    /// Records `nonce` of a message that opened, refusing one already recorded.
    pub fn record(&mut self, nonce: &[u8], now_ms: u64) -> Result<(), AuthError> {
        while self.expiry.front().is_some_and(|(until, _)| *until <= now_ms) {
            if let Some((_, old)) = self.expiry.pop_front() {
                self.seen.remove(&old);
            }
        }
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| AuthError::BadSeal)?;
        if !self.seen.insert(nonce) {
            return Err(AuthError::Replayed);
        }
        // A date taken now is at most MAX_SKEW_MS ahead, so it passes for 2 × MAX_SKEW_MS more.
        self.expiry.push_back((now_ms + 2 * MAX_SKEW_MS, nonce));
        Ok(())
    }

    /// How many nonces are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once_and_forgotten_when_its_date_could_no_longer_pass() {
        let mut guard = ReplayGuard::default();
        guard.record(&[1; NONCE_LEN], 1_000).expect("first");
        assert!(matches!(guard.record(&[1; NONCE_LEN], 2_000), Err(AuthError::Replayed)));
        guard.record(&[2; NONCE_LEN], 2_000).expect("another");
        guard.record(&[3; NONCE_LEN], 1_000 + 2 * MAX_SKEW_MS).expect("later");
        assert_eq!(guard.len(), 2, "the first one's time is up");
        assert!(matches!(guard.record(b"short", 3_000), Err(AuthError::BadSeal)));
    }

    #[test]
    fn dates_beyond_the_skew_are_refused_either_way() {
        let guard = ReplayGuard::default();
        let now = 10 * MAX_SKEW_MS;
        assert!(guard.check_date(now - MAX_SKEW_MS, now).is_ok());
        assert!(guard.check_date(now + MAX_SKEW_MS, now).is_ok());
        assert!(matches!(guard.check_date(now - MAX_SKEW_MS - 1, now), Err(AuthError::Stale(-60))));
        assert!(matches!(guard.check_date(now + 2 * MAX_SKEW_MS, now), Err(AuthError::Stale(120))));
    }
}
