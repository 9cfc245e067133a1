//! Job dependencies (`cmrun --dependency afterok:12:13,singleton`), as SLURM spells them.
//!
//! Every dependency of a job must be met before it starts. The head drops each one from the
//! job as it is met; one that can never be met (an `afterok` job that failed) leaves the job
//! waiting with the reason `DependencyNeverSatisfied`, or ends it in that state where the head
//! is configured so (`scheduling.kill_invalid_depend`, as SLURM's).

use crate::JobId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a dependency waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    /// The jobs have started (or ended without starting).
    After,
    /// The jobs have ended, whatever their state.
    AfterAny,
    /// The jobs have completed (every replica exited 0).
    AfterOk,
    /// The jobs have ended in any state but Completed.
    AfterNotOk,
    /// No earlier job of the same user and name is pending or running.
    Singleton,
}

impl DependencyKind {
    pub fn name(self) -> &'static str {
        match self {
            DependencyKind::After => "after",
            DependencyKind::AfterAny => "afterany",
            DependencyKind::AfterOk => "afterok",
            DependencyKind::AfterNotOk => "afternotok",
            DependencyKind::Singleton => "singleton",
        }
    }
}

/// One dependency: a kind and the jobs it names (none for `singleton`). An array's id stands for
/// every task of the array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub kind: DependencyKind,
    #[serde(default)]
    pub jobs: Vec<JobId>,
}

/// The most jobs one `--dependency` may name: each is looked at in every scheduling pass while
/// it is not met.
pub const MAX_DEPENDENCY_JOBS: usize = 100;

/// Parses `afterok:12:13,afterany:14,singleton`; every part must be met (SLURM's `,`).
pub fn parse(text: &str) -> Result<Vec<Dependency>, String> {
    let bad = |why: &str| Err(format!("bad --dependency {text:?}: {why}"));
    if text.contains('?') {
        return bad("only dependencies that must all be met (joined with ,) are taken, not ? (any of)");
    }
    let mut all = Vec::new();
    let mut named = 0;
    for part in text.split(',') {
        let mut words = part.trim().split(':');
        let kind = match words.next().unwrap_or("") {
            "after" => DependencyKind::After,
            "afterany" => DependencyKind::AfterAny,
            "afterok" => DependencyKind::AfterOk,
            "afternotok" => DependencyKind::AfterNotOk,
            "singleton" => DependencyKind::Singleton,
            other => {
                return bad(&format!(
                    "{other:?} is not a dependency; use after, afterany, afterok, afternotok (each :JOBID[:JOBID...]) or singleton"
                ))
            }
        };
        let jobs: Vec<&str> = words.collect();
        if kind == DependencyKind::Singleton {
            if !jobs.is_empty() {
                return bad("singleton names no jobs");
            }
        } else if jobs.is_empty() {
            return bad(&format!("{} needs at least one job id, e.g. {}:12", kind.name(), kind.name()));
        }
        let mut ids = Vec::with_capacity(jobs.len());
        for id in jobs {
            match id.trim().parse::<u64>() {
                Ok(n) if n > 0 => ids.push(JobId(n)),
                _ => return bad(&format!("{id:?} is not a job id (an array's id stands for all its tasks)")),
            }
        }
        named += ids.len();
        if named > MAX_DEPENDENCY_JOBS {
            return bad(&format!("it names over {MAX_DEPENDENCY_JOBS} jobs"));
        }
        all.push(Dependency { kind, jobs: ids });
    }
    Ok(all)
}

/// As `--dependency` takes it.
impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        for id in &self.jobs {
            write!(f, ":{id}")?;
        }
        Ok(())
    }
}

/// `afterok:12,singleton`.
pub fn show(dependencies: &[Dependency]) -> String {
    dependencies.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_spellings_parse_and_print_back() {
        for text in ["afterok:12", "afterok:12:13,afterany:14", "after:1,afternotok:2,singleton"] {
            assert_eq!(show(&parse(text).unwrap()), text);
        }
        let deps = parse("afterok:12:13").unwrap();
        assert_eq!(deps, [Dependency { kind: DependencyKind::AfterOk, jobs: vec![JobId(12), JobId(13)] }]);
        for bad in
            ["", "afterok", "afterok:", "afterok:x", "afterok:0", "singleton:3", "before:1", "afterok:1?afterok:2"]
        {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let many = format!("afterok:{}", vec!["1"; MAX_DEPENDENCY_JOBS + 1].join(":"));
        assert!(parse(&many).unwrap_err().contains("over"));
    }
}
