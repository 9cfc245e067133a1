//! What one node will have free from now on, as the scheduler plans it: a step function of time,
//! built from what is free now and when the running jobs' time limits run out, less what the
//! plan itself has placed or reserved. A job without a time limit never gives its share back
//! as far as the plan knows.

use cm_common::{Resources, Timestamp};

/// Free resources by time: `steps[i].1` is free from `steps[i].0` until the next step begins
/// (the last step lasts for ever). The first step begins now.
#[derive(Debug, Clone)]
pub struct Timeline {
    steps: Vec<(Timestamp, Resources)>,
}

impl Timeline {
    /// `free` now, and `releases`: what running jobs give back, and when.
    pub fn new(now: Timestamp, free: Resources, mut releases: Vec<(Timestamp, Resources)>) -> Timeline {
        releases.sort_by_key(|(at, _)| *at);
        let mut steps = vec![(now, free)];
        for (at, released) in releases {
            // One overdue is still held (its job is ending): free soon, never now.
            let at = at.max(Timestamp(now.0 + 1));
            let last = steps.last().copied().unwrap_or((now, free));
            let more = last.1.saturating_add(&released);
            match steps.last_mut() {
                Some(step) if step.0 == at => step.1 = more,
                _ => steps.push((at, more)),
            }
        }
        Timeline { steps }
    }

    /// What is free now.
    pub fn free_now(&self) -> Resources {
        self.steps[0].1
    }

    /// The times at which what is free changes: where a job may first fit.
    pub fn changes(&self) -> impl Iterator<Item = Timestamp> + '_ {
        self.steps.iter().map(|(at, _)| *at)
    }

    /// Whether `need` is free all through `[start, end)`; `end` `None`: for ever.
    pub fn fits(&self, start: Timestamp, end: Option<Timestamp>, need: &Resources) -> bool {
        for (i, (at, free)) in self.steps.iter().enumerate() {
            if end.is_some_and(|end| *at >= end) {
                break;
            }
            let step_end = self.steps.get(i + 1).map(|(next, _)| *next);
            if step_end.is_some_and(|next| next <= start) {
                continue; // over before the interval begins
            }
            if !free.contains(need) {
                return false;
            }
        }
        true
    }

    /// Takes `need` from `[start, end)`: a job placed or a reservation made.
    pub fn take(&mut self, start: Timestamp, end: Option<Timestamp>, need: &Resources) {
        let start = start.max(self.steps[0].0);
        self.split_at(start);
        if let Some(end) = end {
            self.split_at(end);
        }
        for (at, free) in &mut self.steps {
            if *at >= start && end.is_none_or(|end| *at < end) {
                *free = free.saturating_sub(need);
            }
        }
    }

    /// Makes a step begin at `at` (no earlier than the first).
    fn split_at(&mut self, at: Timestamp) {
        if let Err(i) = self.steps.binary_search_by_key(&at, |(t, _)| *t) {
            if i > 0 {
                let free = self.steps[i - 1].1;
                self.steps.insert(i, (at, free));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: u32) -> Resources {
        Resources::new(n, 0)
    }

    #[test]
    fn releases_add_up_and_what_is_taken_is_gone_only_meanwhile() {
        let t0 = Timestamp(1000);
        let mut line = Timeline::new(t0, cpus(1), vec![(Timestamp(3000), cpus(2)), (Timestamp(2000), cpus(1))]);
        assert_eq!(line.free_now(), cpus(1));
        assert!(line.fits(t0, Some(Timestamp(2000)), &cpus(1)));
        assert!(!line.fits(t0, Some(Timestamp(2001)), &cpus(2)), "2 CPUs only from 2000");
        assert!(line.fits(Timestamp(2000), None, &cpus(2)));
        assert!(line.fits(Timestamp(3000), None, &cpus(4)));
        assert!(!line.fits(Timestamp(2500), None, &cpus(4)));
        line.take(Timestamp(3000), Some(Timestamp(5000)), &cpus(3));
        assert!(line.fits(Timestamp(3000), Some(Timestamp(5000)), &cpus(1)));
        assert!(!line.fits(Timestamp(3000), Some(Timestamp(5000)), &cpus(2)), "taken meanwhile");
        assert!(line.fits(Timestamp(5000), None, &cpus(4)), "back after");
        assert!(!line.fits(t0, None, &cpus(2)), "the whole future counts");
        assert_eq!(line.changes().collect::<Vec<_>>(), [1000, 2000, 3000, 5000].map(Timestamp));
    }

    #[test]
    fn overdue_releases_are_soon_not_now() {
        let line = Timeline::new(Timestamp(1000), cpus(0), vec![(Timestamp(10), cpus(2))]);
        assert_eq!(line.free_now(), cpus(0), "still held");
        assert!(line.fits(Timestamp(1001), None, &cpus(2)));
    }
}
