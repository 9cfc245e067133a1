//! Building a job from `cmrun`'s arguments and the calling process (user, directory, environment).

use cm_common::array::ArraySpec;
use cm_common::config::JobDefaults;
use cm_common::dependency;
use cm_common::job::{default_job_name, JobSpec, Mpi, UserIdentity};
use cm_common::timelimit::parse_time_limit;
use cm_common::Resources;

/// What the user asked for on the command line; `None` takes the configured default.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub alias: Option<String>,
    pub nodes: Option<u32>,
    pub processes: Option<u32>,
    pub cpus_per_node: Option<u32>,
    pub mem_per_node_mb: Option<u64>,
    pub gpus_per_node: u32,
    pub time_limit: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub requeue: bool,
    /// The partition; `None`: the head's default.
    pub partition: Option<String>,
    pub nice: Option<i32>,
    /// A fixed priority (operators only).
    pub priority: Option<u32>,
    pub mpi: Mpi,
    /// `--array` as given: tasks and throttle.
    pub array: Option<String>,
    /// `--dependency` as given.
    pub dependency: Option<String>,
    pub hold: bool,
    pub command: Vec<String>,
}

/// The most tasks an `--array` may spell out here; the head's `limits.max_array_tasks` is the
/// limit that counts.
const MAX_TASKS_PARSED: u64 = 4_000_001;

/// One word is passed to `sh -c` as it is (so pipes and `$VARS` work); several words are quoted
/// so each reaches the program intact, as if it had been exec'd directly.
pub fn command_line(words: &[String]) -> String {
    match words {
        [one] => one.clone(),
        many => shell_words::join(many),
    }
}

/// The calling user, as the job will run; the head checks the uid against who is really asking.
/// The name is only a hint (`$USER`, else `$LOGNAME`):
/// the head names the uid from its own account database and keeps the hint only for a uid it has
/// no account for (`head/user_names.rs`). An account lookup here would cost every run about 0.1
/// ms, a tenth of `cmrun`'s CPU.
pub fn current_user() -> UserIdentity {
    let uid = nix::unistd::getuid();
    let name = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
    UserIdentity { uid: uid.as_raw(), name }
}

/// The job spec for `request`, run by `user` from `workdir` with `env`.
pub fn build_spec(
    request: &Request,
    defaults: &JobDefaults,
    user: UserIdentity,
    workdir: String,
    env: std::collections::BTreeMap<String, String>,
) -> Result<JobSpec, String> {
    let command = command_line(&request.command);
    let time_limit = request.time_limit.as_deref().unwrap_or(&defaults.time_limit);
    let time_limit_secs = parse_time_limit(time_limit).map_err(|e| e.to_string())?.map(|d| d.as_secs());
    let procs_per_node = request.processes.unwrap_or(defaults.processes_per_node);
    let spec = JobSpec {
        name: request.alias.clone().unwrap_or_else(|| default_job_name(&command)),
        user,
        command,
        workdir,
        env,
        nodes: request.nodes.unwrap_or(defaults.nodes),
        procs_per_node,
        // One CPU per process unless -c says otherwise, as SLURM gives one per task.
        per_node: Resources::new(
            request.cpus_per_node.unwrap_or(defaults.cpus_per_node.max(procs_per_node)),
            request.mem_per_node_mb.unwrap_or(defaults.memory_per_node_mb),
        )
        .with_gpus(request.gpus_per_node),
        time_limit_secs,
        stdout: request.stdout.clone(),
        stderr: request.stderr.clone(),
        requeue: request.requeue,
        max_user_processes: max_user_processes(),
        partition: request.partition.clone().unwrap_or_default(),
        nice: request.nice.unwrap_or(0),
        priority: request.priority,
        mpi: request.mpi,
        // The head checks the count against its own limit; this one only bounds the parse.
        array: request.array.as_deref().map(|a| ArraySpec::parse(a, MAX_TASKS_PARSED)).transpose()?,
        dependency: request.dependency.as_deref().map(dependency::parse).transpose()?.unwrap_or_default(),
        hold: request.hold,
    };
    spec.validate()?;
    Ok(spec)
}

/// This process's limit on the user's processes (`ulimit -u`), which the job runs under.
fn max_user_processes() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    getrlimit(Resource::RLIMIT_NPROC).ok().map(|(soft, _)| soft).filter(|&soft| soft != RLIM_INFINITY)
}

/// A token unique to this submission, so a retried request is not taken twice.
pub fn submit_token() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{host}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_word_is_verbatim_several_are_quoted() {
        assert_eq!(command_line(&words(&["echo $CM_PROC_RANK > out"])), "echo $CM_PROC_RANK > out");
        assert_eq!(command_line(&words(&["python3", "-c", "print(1 + 1)"])), "python3 -c 'print(1 + 1)'");
    }

    #[test]
    fn defaults_fill_what_the_user_did_not_say() {
        let request = Request {
            nodes: Some(2),
            time_limit: Some("1:00".into()),
            command: words(&["hostname"]),
            ..Default::default()
        };
        let user = UserIdentity { uid: 5, name: "u".into() };
        let spec =
            build_spec(&request, &JobDefaults::default(), user, "/tmp".into(), Default::default()).expect("spec");
        assert_eq!((spec.nodes, spec.procs_per_node, spec.per_node), (2, 1, Resources::new(1, 100)));
        assert_eq!(spec.time_limit_secs, Some(60));
        assert_eq!(spec.name, "hostname");
        let four = Request { processes: Some(4), ..request.clone() };
        let spec =
            build_spec(&four, &JobDefaults::default(), spec.user, "/tmp".into(), Default::default()).expect("spec");
        assert_eq!(spec.per_node.cpus, 4, "one CPU per process unless -c says otherwise");
        let told = Request { cpus_per_node: Some(2), ..four };
        let spec =
            build_spec(&told, &JobDefaults::default(), spec.user, "/tmp".into(), Default::default()).expect("spec");
        assert_eq!(spec.per_node.cpus, 2);
    }

    #[test]
    fn a_bad_time_limit_is_refused_before_anything_is_sent() {
        let request = Request { time_limit: Some("soon".into()), command: words(&["true"]), ..Default::default() };
        let user = UserIdentity { uid: 5, name: "u".into() };
        let err = build_spec(&request, &JobDefaults::default(), user, "/tmp".into(), Default::default()).unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }
}
