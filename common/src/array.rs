//! Job arrays: the set of task indices `cmrun --array` takes, spelled as SLURM spells it
//! (`0-99`, `1,5,7-9`, `0-99:10`, a throttle `%8`), kept compact whatever its size.
//!
//! A [`TaskSet`] is a list of runs (`first`, `last`, `step`), in order and not overlapping, so
//! an array of 100,000 tasks with a step is one run, not 100,000 numbers. Taking the first task
//! off, or one from the middle (a task cancelled while it waits), changes one or two runs.

use crate::JobId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One run of task indices: `first`, `first + step`, ... up to `last` (which it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub first: u32,
    pub last: u32,
    pub step: u32,
}

impl Run {
    fn count(&self) -> u64 {
        u64::from((self.last - self.first) / self.step) + 1
    }

    fn contains(&self, task: u32) -> bool {
        task >= self.first && task <= self.last && (task - self.first).is_multiple_of(self.step)
    }
}

/// A set of task indices: runs in increasing order, none overlapping, each `last` a task of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSet {
    runs: Vec<Run>,
}

/// The largest task index, as SLURM's `MaxArraySize` bounds it (indices are below it).
pub const MAX_TASK_INDEX: u32 = 4_000_000;

impl TaskSet {
    /// The set of `tasks`, in as few runs as a left-to-right sweep finds.
    pub fn of(tasks: impl IntoIterator<Item = u32>) -> TaskSet {
        let sorted: Vec<u32> = tasks.into_iter().collect::<BTreeSet<u32>>().into_iter().collect();
        let mut runs: Vec<Run> = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            // A run of three or more evenly spaced tasks is one run; anything else stands alone.
            let first = sorted[i];
            let mut last = i;
            if i + 2 < sorted.len() && sorted[i + 1] - first == sorted[i + 2] - sorted[i + 1] {
                let step = sorted[i + 1] - first;
                last = i + 2;
                while last + 1 < sorted.len() && sorted[last + 1] - sorted[last] == step {
                    last += 1;
                }
                runs.push(Run { first, last: sorted[last], step });
            } else if i + 1 < sorted.len() && sorted[i + 1] == first + 1 {
                last = i + 1;
                runs.push(Run { first, last: sorted[last], step: 1 });
            } else {
                runs.push(Run { first, last: first, step: 1 });
            }
            i = last + 1;
        }
        TaskSet { runs }
    }

    /// Parses `0-99`, `1,5,7-9`, `0-99:10` (no throttle: see [`ArraySpec::parse`]). `max_tasks`
    /// bounds the count, checked before the set is built.
    pub fn parse(text: &str, max_tasks: u64) -> Result<TaskSet, String> {
        let bad = |why: String| Err(format!("bad --array {text:?}: {why}"));
        if text.trim().is_empty() {
            return bad("give task indices, e.g. 0-99, 1,5,7-9 or 0-99:10".into());
        }
        let mut runs = Vec::new();
        let mut count = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once(':') {
                Some((range, step)) => (range, Some(step)),
                None => (part, None),
            };
            let number = |s: &str| -> Result<u32, String> {
                let n: u32 =
                    s.trim().parse().map_err(|_| format!("{s:?} is not a task index (0 to {MAX_TASK_INDEX})"))?;
                if n > MAX_TASK_INDEX {
                    return Err(format!("{n} is over the largest task index, {MAX_TASK_INDEX}"));
                }
                Ok(n)
            };
            let (first, last) = match range.split_once('-') {
                Some((a, b)) => (number(a), number(b)),
                None => (number(range), number(range)),
            };
            let (first, last) = match (first, last) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            if first > last {
                return bad(format!("{first}-{last} runs backwards"));
            }
            let step = match step {
                None => 1,
                Some(s) => match s.trim().parse::<u32>() {
                    Ok(step) if step > 0 => step,
                    _ => return bad(format!("the step {s:?} is not a whole number above 0")),
                },
            };
            let last = first + (last - first) / step * step;
            let run = Run { first, last, step };
            count += run.count();
            if count > max_tasks {
                return bad(format!("over {max_tasks} tasks (limits.max_array_tasks in the head's config.yaml)"));
            }
            runs.push(run);
        }
        Ok(TaskSet::of(runs.iter().flat_map(|r| (r.first..=r.last).step_by(r.step as usize))))
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether it is well formed (as it may not be when it comes off the wire): each run's
    /// step above 0 and its last task reached by it, the runs in order and apart, every task at
    /// most [`MAX_TASK_INDEX`].
    pub fn check(&self) -> Result<(), String> {
        let mut after: Option<u32> = None;
        for run in &self.runs {
            if run.step == 0 || run.first > run.last || !(run.last - run.first).is_multiple_of(run.step) {
                return Err(format!("the array run {}-{}:{} is malformed", run.first, run.last, run.step));
            }
            if run.last > MAX_TASK_INDEX || after.is_some_and(|a| run.first <= a) {
                return Err("the array's task indices are out of order or over the largest index".into());
            }
            after = Some(run.last);
        }
        Ok(())
    }

    /// How many tasks it holds.
    pub fn count(&self) -> u64 {
        self.runs.iter().map(Run::count).sum()
    }

    pub fn first(&self) -> Option<u32> {
        self.runs.first().map(|r| r.first)
    }

    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|r| r.last)
    }

    pub fn contains(&self, task: u32) -> bool {
        self.runs.iter().any(|r| r.contains(task))
    }

    /// Takes the lowest task off.
    pub fn pop_first(&mut self) -> Option<u32> {
        let first = self.first()?;
        self.remove(first);
        Some(first)
    }

    /// Takes `task` out; false if it was not in.
    pub fn remove(&mut self, task: u32) -> bool {
        let Some(i) = self.runs.iter().position(|r| r.contains(task)) else { return false };
        let run = self.runs[i];
        let mut rest = Vec::with_capacity(2);
        if task > run.first {
            rest.push(Run { first: run.first, last: task - run.step, step: run.step });
        }
        if task < run.last {
            rest.push(Run { first: task + run.step, last: run.last, step: run.step });
        }
        self.runs.splice(i..=i, rest);
        true
    }

    /// Adds `task`, lower than every task in it.
    fn insert_first(&mut self, task: u32) {
        match self.runs.first_mut() {
            Some(run) if run.first > task && run.first - task == run.step && run.first != run.last => run.first = task,
            Some(run) if run.first == run.last && run.first > task => {
                *run = Run { first: task, last: run.first, step: run.first - task };
            }
            _ => self.runs.insert(0, Run { first: task, last: task, step: 1 }),
        }
    }

    /// Every task, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|r| (r.first..=r.last).step_by(r.step as usize))
    }
}

/// As `cmrun --array` takes it: `1,3,5-9`, `0-99:10`.
impl fmt::Display for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, run) in self.runs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match (run.first == run.last, run.step) {
                (true, _) => write!(f, "{}", run.first)?,
                (false, 1) => write!(f, "{}-{}", run.first, run.last)?,
                (false, step) => write!(f, "{}-{}:{step}", run.first, run.last)?,
            }
        }
        Ok(())
    }
}

/// An array as submitted: its tasks and how many may run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    pub tasks: TaskSet,
    /// At most this many tasks run at once (`%8`); `None`: no limit.
    #[serde(default)]
    pub throttle: Option<u32>,
}

impl ArraySpec {
    /// Whether it is well formed: at least one task, a throttle above 0 (see [`TaskSet::check`]).
    pub fn check(&self) -> Result<(), String> {
        self.tasks.check()?;
        if self.tasks.is_empty() {
            return Err("the array has no tasks".into());
        }
        if self.throttle == Some(0) {
            return Err("the array's throttle (%N) must be above 0".into());
        }
        Ok(())
    }

    /// Parses `0-99`, `1,5,7-9`, `0-99:10`, each with an optional throttle `%8`.
    pub fn parse(text: &str, max_tasks: u64) -> Result<ArraySpec, String> {
        let (tasks, throttle) = match text.split_once('%') {
            Some((tasks, throttle)) => match throttle.trim().parse::<u32>() {
                Ok(n) if n > 0 => (tasks, Some(n)),
                _ => return Err(format!("bad --array {text:?}: the throttle after % is not a whole number above 0")),
            },
            None => (text, None),
        };
        Ok(ArraySpec { tasks: TaskSet::parse(tasks, max_tasks)?, throttle })
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.tasks)?;
        if let Some(throttle) = self.throttle {
            write!(f, "%{throttle}")?;
        }
        Ok(())
    }
}

/// A job's place in its array. The array's record (the job it was submitted as) holds every
/// task that has not started yet: `task` and those `waiting` with it. A task that starts while
/// others wait is split off as a job of its own, with an id of its own; the last one to start
/// is the record itself, as in SLURM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayTask {
    /// The array's id: the id it was submitted as.
    pub array: JobId,
    pub task: u32,
    /// The other tasks still waiting in this record; empty for a task of its own.
    #[serde(default, skip_serializing_if = "TaskSet::is_empty")]
    pub waiting: TaskSet,
}

impl ArrayTask {
    /// How many tasks this job stands for: itself and those waiting with it.
    pub fn tasks(&self) -> u64 {
        1 + self.waiting.count()
    }

    /// Every task this job stands for.
    pub fn all(&self) -> TaskSet {
        let mut all = self.waiting.clone();
        all.insert_first(self.task);
        all
    }

    /// Whether `task` is among the tasks this job stands for.
    pub fn holds(&self, task: u32) -> bool {
        self.task == task || self.waiting.contains(task)
    }
}

/// `12_7` for one task, `12_[3-99]` for a record with tasks waiting.
impl fmt::Display for ArrayTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.waiting.is_empty() {
            write!(f, "{}_{}", self.array, self.task)
        } else {
            write!(f, "{}_[{}]", self.array, self.all())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slurm_spellings_parse() {
        let parse = |s: &str| ArraySpec::parse(s, 1_000_000).map(|a| (a.tasks.iter().collect::<Vec<_>>(), a.throttle));
        assert_eq!(parse("0-3").unwrap(), (vec![0, 1, 2, 3], None));
        assert_eq!(parse("1,5,7-9").unwrap(), (vec![1, 5, 7, 8, 9], None));
        assert_eq!(parse("0-99:10%8").unwrap(), ((0..100).step_by(10).collect(), Some(8)));
        assert_eq!(parse("0-10:4").unwrap().0, [0, 4, 8], "the last task is the last one the step reaches");
        assert_eq!(parse("3,3,1-2").unwrap().0, [1, 2, 3], "duplicates are one task");
        for bad in ["", "a", "5-1", "1-", "0-9:0", "0-9%0", "0-9%x", "-1", "1,,2", "4000001", "0-9:-1"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let err = ArraySpec::parse("0-99", 50).unwrap_err();
        assert!(err.contains("limits.max_array_tasks"), "{err}");
    }

    #[test]
    fn display_is_compact() {
        let show = |s: &str| ArraySpec::parse(s, 1_000_000).unwrap().to_string();
        assert_eq!(show("0-99"), "0-99");
        assert_eq!(show("1,5,7-9"), "1,5,7-9");
        assert_eq!(show("0-99999:2%4"), "0-99998:2%4");
        let task = ArrayTask { array: JobId(12), task: 40, waiting: TaskSet::of(41..100) };
        assert_eq!(task.to_string(), "12_[40-99]");
        assert_eq!(ArrayTask { waiting: TaskSet::default(), ..task }.to_string(), "12_40");
    }

    #[test]
    fn malformed_sets_from_the_wire_are_refused() {
        let set = |runs: Vec<Run>| TaskSet { runs };
        assert!(set(vec![Run { first: 0, last: 9, step: 0 }]).check().is_err());
        assert!(set(vec![Run { first: 9, last: 0, step: 1 }]).check().is_err());
        assert!(set(vec![Run { first: 0, last: 9, step: 2 }]).check().is_err());
        assert!(set(vec![Run { first: 0, last: 5, step: 1 }, Run { first: 5, last: 6, step: 1 }]).check().is_err());
        assert!(set(vec![Run { first: 0, last: u32::MAX, step: 1 }]).check().is_err());
        assert!(set(vec![Run { first: 0, last: 4, step: 2 }, Run { first: 5, last: 6, step: 1 }]).check().is_ok());
        assert!(ArraySpec { tasks: TaskSet::default(), throttle: None }.check().is_err());
    }

    #[test]
    fn a_huge_stepped_array_is_one_run() {
        let set = TaskSet::parse("0-3999999:2", 4_000_000).unwrap();
        assert_eq!(set.runs.len(), 1);
        assert_eq!(set.count(), 2_000_000);
    }

    fn sets() -> impl Strategy<Value = BTreeSet<u32>> {
        prop::collection::btree_set(0u32..300, 0..60)
    }

    proptest! {
        /// Whatever the tasks, the compact form holds exactly them, prints as text that parses
        /// back to it, and changes as the set does when tasks are taken off.
        #[test]
        fn compact_form_is_exact(tasks in sets(), remove in prop::collection::vec(0u32..300, 0..20)) {
            let mut set = TaskSet::of(tasks.iter().copied());
            let mut model = tasks.clone();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.count(), model.len() as u64);
            if !model.is_empty() {
                prop_assert_eq!(TaskSet::parse(&set.to_string(), 1000).unwrap(), set.clone());
            }
            for t in remove {
                prop_assert_eq!(set.remove(t), model.remove(&t));
                prop_assert_eq!(set.contains(t), false);
            }
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.pop_first(), model.pop_first());
            prop_assert_eq!(set.count(), model.len() as u64);
            // A record's tasks: the first and those waiting with it.
            if let Some(first) = set.pop_first() {
                let record = ArrayTask { array: JobId(1), task: first, waiting: set.clone() };
                let all: Vec<u32> = record.all().iter().collect();
                prop_assert_eq!(all, std::iter::once(first).chain(set.iter()).collect::<Vec<_>>());
                prop_assert!(record.holds(first) && set.iter().all(|t| record.holds(t)));
            }
        }

        /// Any text is parsed or refused with a message, never a panic; what parses is in range.
        #[test]
        fn any_text_is_parsed_or_refused(text in "[0-9,:%-]{0,24}") {
            if let Ok(array) = ArraySpec::parse(&text, 10_000) {
                prop_assert!(array.tasks.count() <= 10_000);
                prop_assert!(array.tasks.iter().all(|t| t <= MAX_TASK_INDEX));
                prop_assert!(!array.tasks.is_empty());
            }
        }

        /// Ranges with steps hold what the spelling says.
        #[test]
        fn ranges_hold_what_they_say(first in 0u32..1000, len in 0u32..1000, step in 1u32..50) {
            let text = format!("{first}-{}:{step}", first + len);
            let set = TaskSet::parse(&text, 100_000).unwrap();
            let expected: Vec<u32> = (first..=first + len).step_by(step as usize).collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), expected);
        }
    }
}
