//! How many jobs are pending or running, in all and per user, kept as jobs change so that a
//! submission checks the queue's limits without counting the queue. An array's record counts
//! for each task waiting in it.

use cm_common::job::Job;
use std::collections::HashMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queued {
    pub all: usize,
    by_user: HashMap<u32, usize>,
}

impl Queued {
    /// The counts of `jobs`.
    pub fn of<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Queued {
        let mut queued = Queued::default();
        for job in jobs {
            queued.change(None, Some(job));
        }
        queued
    }

    /// `uid`'s pending and running jobs.
    pub fn of_user(&self, uid: u32) -> usize {
        self.by_user.get(&uid).copied().unwrap_or(0)
    }

    /// A job went from `before` to `after` (either absent: new, or forgotten).
    pub fn change(&mut self, before: Option<&Job>, after: Option<&Job>) {
        let queued = |job: Option<&Job>| {
            job.filter(|j| !j.state.is_terminal()).map(|j| (j.spec.user.uid, usize::try_from(j.weight()).unwrap_or(1)))
        };
        if let Some((uid, weight)) = queued(before) {
            self.all -= weight;
            if let Some(count) = self.by_user.get_mut(&uid) {
                *count -= weight;
                if *count == 0 {
                    self.by_user.remove(&uid);
                }
            }
        }
        if let Some((uid, weight)) = queued(after) {
            self.all += weight;
            *self.by_user.entry(uid).or_insert(0) += weight;
        }
    }
}
