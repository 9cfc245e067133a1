//! Jobs that have settled, kept in the head's memory for a while (SLURM's `MinJobAge`), so that
//! `cmrun --wait`, `cminfo JOBID` and dependencies on them are answered without the store. They
//! leave after `min_job_age`, or sooner when more than `max_in_memory` have settled since: what
//! the head holds is bounded however long it runs. They stay in the store for good.
//!
//! Only summaries are kept (no environment: see `Job::summary`).

use cm_common::job::Job;
use cm_common::{JobId, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub struct Finished {
    min_age: Duration,
    max_in_memory: usize,
    jobs: HashMap<JobId, Job>,
    /// When each settled, oldest first.
    order: VecDeque<(Timestamp, JobId)>,
}

impl Finished {
    pub fn new(min_age: Duration, max_in_memory: usize) -> Finished {
        Finished { min_age, max_in_memory, jobs: HashMap::new(), order: VecDeque::new() }
    }

    /// Keeps `job`, which settled at `now` (a job kept already is replaced, and keeps its place).
    pub fn keep(&mut self, job: &Job, now: Timestamp) {
        if self.min_age.is_zero() || self.max_in_memory == 0 {
            return;
        }
        if self.jobs.insert(job.id, job.summary()).is_none() {
            self.order.push_back((now, job.id));
        }
        while self.order.len() > self.max_in_memory {
            self.forget_oldest();
        }
    }

    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Lets go of the jobs that settled over `min_age` before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        while self.order.front().is_some_and(|(at, _)| now.since(*at) > self.min_age) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.jobs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::JobSpec;

    fn job(id: u64) -> Job {
        let mut spec = JobSpec::example();
        spec.env.insert("SECRET".into(), "x".into());
        Job::new(JobId(id), spec, Timestamp(0), String::new())
    }

    #[test]
    fn kept_for_min_age_and_never_more_than_the_cap() {
        let mut finished = Finished::new(Duration::from_secs(300), 3);
        finished.keep(&job(1), Timestamp(0));
        assert!(finished.get(JobId(1)).is_some_and(|j| j.spec.env.is_empty()), "a summary, no environment");
        finished.keep(&job(2), Timestamp(1_000));
        finished.expire(Timestamp(300_000));
        assert_eq!(finished.len(), 2, "not older than min_age yet");
        finished.expire(Timestamp(300_001));
        assert!(finished.get(JobId(1)).is_none() && finished.get(JobId(2)).is_some());
        for id in 3..=6 {
            finished.keep(&job(id), Timestamp(2_000));
        }
        assert_eq!(finished.len(), 3, "the cap holds");
        assert!(finished.get(JobId(3)).is_none() && finished.get(JobId(6)).is_some(), "the oldest leave first");
        let mut none = Finished::new(Duration::ZERO, 10);
        none.keep(&job(1), Timestamp(0));
        assert_eq!(none.len(), 0, "min_job_age 0 keeps nothing");
    }
}
