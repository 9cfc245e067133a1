//! `cmacct`'s fields and filters: what each column shows of a job, and how times, states and
//! users on its command line are read.

use crate::output::{cpu_time, memory, shown};
use cm_common::job::{Job, JobState};
use cm_common::Timestamp;
use std::time::SystemTime;

/// Every field `--format` may name (case does not matter), with what it shows.
pub const FIELDS: [(&str, &str); 21] = [
    ("JobID", "the job's id"),
    ("JobName", "its name"),
    ("User", "who submitted it"),
    (
        "State",
        "Pending, Running, Completed, Failed, Killed, TimedOut, NodeFail, OutOfMemory or DependencyNeverSatisfied",
    ),
    ("Submit", "when it was submitted (UTC)"),
    ("Start", "when it started"),
    ("End", "when it ended"),
    ("Elapsed", "wall time from start to end (or to now)"),
    ("NNodes", "nodes"),
    ("NProcs", "processes, all nodes together"),
    ("AllocCPUS", "CPUs reserved, all nodes together"),
    ("ReqMem", "memory reserved per node"),
    ("TotalCPU", "CPU time (user + system) of all its processes"),
    ("MaxRSS", "the highest peak memory of the job on any one node (its cgroup's peak)"),
    ("OOMKills", "processes the kernel killed for going over the job's memory"),
    ("ExitCode", "the code cmrun --wait returns for it"),
    ("NodeList", "the nodes it ran on"),
    ("Reason", "why it failed, if it did, or why it waits"),
    ("Partition", "the partition it ran or waits in"),
    ("Timelimit", "its time limit ([D-]HH:MM:SS, or UNLIMITED)"),
    ("Priority", "a pending job's priority (- for others)"),
];

/// `jobs` as a table of `fields` (`--format`), for `cmacct` and `cminfo --format`.
pub fn fields_table(jobs: &[Job], fields: &[&str], now: Timestamp) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    table.set_header(fields.iter().copied());
    for job in jobs {
        table.add_row(fields.iter().map(|f| value(job, f, now)).collect::<Vec<_>>());
    }
    table.to_string()
}

/// `jobs` as JSON objects, one key per field in lower case.
pub fn fields_json(jobs: &[Job], fields: &[&str], now: Timestamp) -> serde_json::Value {
    let rows = jobs.iter().map(|job| {
        serde_json::Value::Object(fields.iter().map(|f| (f.to_lowercase(), value(job, f, now).into())).collect())
    });
    serde_json::Value::Array(rows.collect())
}

/// A user named on the command line (a name or a uid), as a uid.
pub fn uid_of(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(found)) => Ok(found.uid.as_raw()),
        _ => Err(format!("no user named {user:?} on this host")),
    }
}

/// The columns shown when `--format` is not given.
pub const DEFAULT_FORMAT: &str = "JobID,JobName,User,State,Elapsed,TotalCPU,MaxRSS,ExitCode";

/// The fields a `--format` list names, in their canonical spelling; the error names an unknown one.
pub fn parse_format(list: &str) -> Result<Vec<&'static str>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            FIELDS.iter().map(|(name, _)| *name).find(|name| name.eq_ignore_ascii_case(f)).ok_or_else(|| {
                let known: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
                format!("unknown field {f:?} in --format; fields: {}", known.join(","))
            })
        })
        .collect()
}

/// State names of a `--state` list, in their canonical spelling.
pub fn parse_states(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            JobState::NAMES
                .iter()
                .find(|name| name.eq_ignore_ascii_case(s))
                .map(|name| name.to_string())
                .ok_or_else(|| format!("unknown state {s:?}; states: {}", JobState::NAMES.join(",")))
        })
        .collect()
}

/// A time on the command line: `now`, `now-DURATION` (`now-2h`, `now-3days`), a date
/// (`2026-12-06`, midnight UTC) or a date and time (`2026-12-06T14:30[:00]`, UTC).
pub fn parse_time(text: &str, now: SystemTime) -> Result<Timestamp, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "cannot read the time {text:?}: give now, now-DURATION (now-2h), YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC)"
        )
    };
    let at = if text == "now" {
        now
    } else if let Some(ago) = text.strip_prefix("now-") {
        let ago = humantime::parse_duration(ago).map_err(|_| bad())?;
        now.checked_sub(ago).ok_or_else(bad)?
    } else {
        let full = match text.len() {
            10 => format!("{text}T00:00:00"),
            16 => format!("{text}:00"),
            _ => text.to_string(),
        };
        humantime::parse_rfc3339_weak(&full).map_err(|_| bad())?
    };
    let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| bad())?.as_millis();
    Ok(Timestamp(u64::try_from(ms).map_err(|_| bad())?))
}

/// What field `name` shows of `job`, `now` being the end of a job still running.
pub fn value(job: &Job, name: &str, now: Timestamp) -> String {
    let time = |t: Option<Timestamp>| t.map_or_else(|| "-".to_string(), |t| t.to_string());
    let spec = &job.spec;
    let usage = job.usage();
    match name {
        "JobID" => job.display_id(),
        "JobName" => shown(&spec.name),
        "User" => shown(&spec.user.name),
        "State" => job.state.name().to_string(),
        "Submit" => job.submitted_at.to_string(),
        "Start" => time(job.state.started_at()),
        "End" => time(job.state.ended_at()),
        "Elapsed" => match job.state.started_at() {
            Some(start) => {
                let end = job.state.ended_at().unwrap_or(now);
                cpu_time(Some(u64::try_from(end.since(start).as_millis()).unwrap_or(u64::MAX)))
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
            None => "-".to_string(),
        },
        "NNodes" => spec.nodes.to_string(),
        "NProcs" => spec.total_procs().to_string(),
        "AllocCPUS" => (u64::from(spec.nodes) * u64::from(spec.per_node.cpus)).to_string(),
        "ReqMem" => format!("{}M", spec.per_node.memory_mb),
        "TotalCPU" => cpu_time(usage.and_then(|u| u.cpu_time_ms)),
        "MaxRSS" => memory(usage.and_then(|u| u.peak_memory_bytes)),
        "OOMKills" => usage.map_or_else(|| "-".to_string(), |u| u.oom_kills.to_string()),
        "ExitCode" => job.exit_code().map_or_else(|| "-".to_string(), |c| c.to_string()),
        "NodeList" => job.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>().join(","),
        "Partition" => shown(if spec.partition.is_empty() { "-" } else { &spec.partition }),
        "Timelimit" => cm_common::timelimit::format_time_limit(spec.time_limit()),
        "Priority" => job.priority.map_or_else(|| "-".to_string(), |p| p.to_string()),
        "Reason" => match &job.pending_reason {
            Some(pending) => shown(&format!("{}: {}", pending.word, pending.sentence)),
            None => shown(job.state.reason().unwrap_or("-")),
        },
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::{JobNode, JobSpec, NodeEnd, NodeEndCause, NodeUsage};
    use cm_common::{JobId, NodeId};
    use std::time::Duration;

    #[test]
    fn formats_and_states_are_read_whatever_their_case_and_unknown_ones_are_named() {
        assert_eq!(parse_format("jobid, STATE,maxrss").expect("format"), ["JobID", "State", "MaxRSS"]);
        assert!(parse_format("jobid,bogus").unwrap_err().contains("\"bogus\""));
        assert!(parse_format(DEFAULT_FORMAT).is_ok());
        assert_eq!(parse_states("outofmemory,failed").expect("states"), ["OutOfMemory", "Failed"]);
        assert!(parse_states("done").unwrap_err().contains("OutOfMemory"));
    }

    #[test]
    fn times_are_absolute_utc_or_relative_to_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("now", now), Ok(Timestamp(1_000_000_000)));
        assert_eq!(parse_time("now-2h", now), Ok(Timestamp(1_000_000_000 - 7_200_000)));
        assert_eq!(parse_time("1970-01-02", now), Ok(Timestamp(86_400_000)));
        assert_eq!(parse_time("1970-01-02T01:00", now), Ok(Timestamp(90_000_000)));
        assert_eq!(parse_time("1970-01-02T01:00:30", now), Ok(Timestamp(90_030_000)));
        assert!(parse_time("yesterday", now).unwrap_err().contains("YYYY-MM-DD"));
    }

    #[test]
    fn fields_show_the_jobs_figures() {
        let mut job = Job::new(JobId(9), JobSpec::example(), Timestamp(0), String::new());
        job.state =
            JobState::OutOfMemory { started_at: Timestamp(1000), ended_at: Timestamp(4500), reason: "r".into() };
        let usage = NodeUsage { cpu_time_ms: Some(2500), peak_memory_bytes: Some(64 << 20), oom_kills: 1 };
        job.nodes = vec![JobNode {
            node: NodeId::new("c1"),
            started_at: None,
            end: Some(NodeEnd {
                ended_at: Timestamp(4500),
                cause: NodeEndCause::Exited,
                replicas: vec![],
                usage: Some(usage),
            }),
        }];
        let now = Timestamp(9999);
        let shown: Vec<String> =
            ["State", "Elapsed", "TotalCPU", "MaxRSS", "OOMKills", "ExitCode", "NodeList", "AllocCPUS", "ReqMem"]
                .iter()
                .map(|f| value(&job, f, now))
                .collect();
        assert_eq!(shown, ["OutOfMemory", "00:00:03", "00:00:02.500", "64.0M", "1", "137", "c1", "1", "100M"]);
        assert!(FIELDS.iter().all(|(name, _)| !value(&job, name, now).is_empty()), "every field shows something");
    }
}
