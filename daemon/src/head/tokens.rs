//! Recent submission tokens, so a retried `AssignJobId` gets the id of the job it already made.
//!
//! A client retries a submit when no reply came, which includes a head that stored the job and
//! died before replying. The new head may even run that job to completion before the retry
//! arrives, so tokens are kept after a job settles: the most recent [`RecentTokens::CAPACITY`].

use cm_common::JobId;
use std::collections::{HashMap, VecDeque};

/// A bounded map from submission token to job id, oldest forgotten first.
#[derive(Default)]
pub struct RecentTokens {
    ids: HashMap<String, JobId>,
    order: VecDeque<String>,
}

impl RecentTokens {
    /// Far more submissions than a client retries across.
    pub const CAPACITY: usize = 65_536;

    pub fn get(&self, token: &str) -> Option<JobId> {
        self.ids.get(token).copied()
    }

    pub fn insert(&mut self, token: String, id: JobId) {
        if token.is_empty() || self.ids.contains_key(&token) {
            return;
        }
        if self.order.len() >= Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(token.clone(), id);
        self.order.push_back(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_full_then_forgets_the_oldest() {
        let mut tokens = RecentTokens::default();
        for i in 0..RecentTokens::CAPACITY as u64 + 1 {
            tokens.insert(format!("t{i}"), JobId(i));
        }
        assert_eq!(tokens.get("t0"), None);
        assert_eq!(tokens.get("t1"), Some(JobId(1)));
        tokens.insert("t1".into(), JobId(99));
        assert_eq!(tokens.get("t1"), Some(JobId(1)), "the first id for a token stands");
    }
}
