//! A pending job's priority: the order jobs start in.
//!
//! Its partition's priority, plus one point per minute it has waited (up to `max_age`), plus
//! [`MAX_NICE`], less its nice value, and never below 1; or the priority an operator fixed
//! (0 holds the job). The age term lets a job that has waited long enough pass younger ones of
//! a higher nice; the partition term orders partitions that share nodes.

use cm_common::job::Job;
use cm_common::partition::MAX_NICE;
use cm_common::Timestamp;
use std::time::Duration;

/// The priority of `job` at `now`, in a partition of priority `partition_priority`.
pub fn priority(job: &Job, partition_priority: u32, max_age: Duration, now: Timestamp) -> u64 {
    if let Some(fixed) = job.spec.priority {
        return u64::from(fixed);
    }
    let minutes = i64::try_from(now.since(job.submitted_at).min(max_age).as_secs() / 60).unwrap_or(i64::MAX);
    let computed = i64::from(partition_priority) + minutes + i64::from(MAX_NICE) - i64::from(job.spec.nice);
    u64::try_from(computed.max(1)).unwrap_or(1)
}

/// Whether `job` is held: by its owner (`cmctl hold`), or by an operator (its priority fixed at 0).
pub fn is_held(job: &Job) -> bool {
    job.spec.hold || job.spec.priority == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::JobBuilder;

    #[test]
    fn age_partition_and_nice_add_up_and_an_operator_may_fix_it() {
        let mut job = JobBuilder::new(1).build();
        job.submitted_at = Timestamp(0);
        let day = Duration::from_secs(86_400);
        let at = |minutes: u64| Timestamp(minutes * 60_000);
        assert_eq!(priority(&job, 0, day, at(0)), 10_000);
        assert_eq!(priority(&job, 500, day, at(30)), 10_530, "partition plus age");
        assert_eq!(priority(&job, 0, day, at(3 * 1440)), 11_440, "age stops at max_age");
        job.spec.nice = 100;
        assert_eq!(priority(&job, 0, day, at(30)), 9_930);
        job.spec.nice = -100;
        assert_eq!(priority(&job, 0, day, at(0)), 10_100);
        job.spec.nice = 10_000;
        assert_eq!(priority(&job, 0, day, at(0)), 1, "never below 1: 0 means held");
        assert!(!is_held(&job));
        job.spec.priority = Some(42);
        assert_eq!(priority(&job, 9_999, day, at(999)), 42);
        job.spec.priority = Some(0);
        assert!(is_held(&job));
    }
}
