//! Everything the tools print: node and job tables, one job in full, and the JSON forms.
//! Column headers are part of cm's interface; scripts should prefer `--json`. What users wrote
//! (commands, names, paths, reasons) is shown with control and text-direction characters escaped,
//! so that a job cannot drive the terminal of whoever lists it, nor make a listing lie.

use cm_common::job::{is_bidi_control, Job, JobState, NodeEndCause};
use cm_common::node::{Node, NodeHealth, Role};
use cm_common::partition::PartitionInfo;
use cm_common::timelimit::format_time_limit;
use comfy_table::{presets, ContentArrangement, Table};

/// Headers of the node tables.
pub const NODE_COLUMNS: [&str; 9] =
    ["Node", "Status", "CPUs", "Memory (MB)", "Free CPUs", "Free Memory (MB)", "GPUs", "Free GPUs", "Containment"];
/// Headers of the job table.
pub const JOB_COLUMNS: [&str; 9] =
    ["ID", "Name", "User", "Partition", "Status", "Priority", "Reason", "Command", "Nodes"];
/// Headers of the partitions table, one row per partition and node status, as `sinfo` shows.
pub const PARTITION_COLUMNS: [&str; 5] = ["Partition", "Time limit", "Nodes", "Status", "Node list"];

/// Whether `c` must not reach a terminal as it is.
fn unsafe_to_show(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// `text` with control and text-direction characters escaped (`\n`, `\u{1b}`, `\u{202e}`).
pub fn shown(text: &str) -> String {
    if !text.chars().any(unsafe_to_show) {
        return text.to_string();
    }
    text.chars().map(|c| if unsafe_to_show(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// JSON text with what JSON leaves raw escaped as `\uXXXX`: C1 controls, DEL and text-direction
/// characters (the encoder escapes the C0 controls already). It is the same JSON document; only
/// its spelling changes, so a script reads the very strings that were submitted.
pub fn json_shown(json: &str) -> String {
    if !json.chars().any(|c| unsafe_to_show(c) && c != '\n') {
        return json.to_string();
    }
    json.chars()
        .map(|c| if unsafe_to_show(c) && c != '\n' { format!("\\u{:04x}", u32::from(c)) } else { c.to_string() })
        .collect()
}

/// Adds a row whose cells are shown escaped.
fn add_row(table: &mut Table, cells: Vec<String>) {
    table.add_row(cells.iter().map(|cell| shown(cell)).collect::<Vec<_>>());
}

fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_HORIZONTAL_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(headers.iter().copied());
    table
}

fn node_table(nodes: &[&Node]) -> Table {
    let mut t = table(&NODE_COLUMNS);
    for node in nodes {
        let free = node.free();
        let status = shorten(&node_status(node), MAX_STATUS_CHARS);
        add_row(
            &mut t,
            vec![
                node.id.to_string(),
                status,
                node.capacity.cpus.to_string(),
                node.capacity.memory_mb.to_string(),
                free.cpus.to_string(),
                free.memory_mb.to_string(),
                node.capacity.gpus.to_string(),
                free.gpus.to_string(),
                node.containment.split(':').next().unwrap_or_default().to_string(),
            ],
        );
    }
    t
}

/// A node's status in words: why it is down or drained, and who drained it.
fn node_status(node: &Node) -> String {
    match (&node.health, &node.drain) {
        (NodeHealth::Down { since, reason }, _) => format!("Down since {since}: {reason}"),
        (NodeHealth::Up, Some(drain)) => format!("{}: {} (by {})", node.status(), drain.reason, drain.by),
        (NodeHealth::Up, None) => node.status().to_string(),
    }
}

/// The longest status a node table shows; `cmctl show node` shows all of it.
const MAX_STATUS_CHARS: usize = 60;

/// The name this host's account database has for `uid`, with the uid; the uid alone if none.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// One node with every field, for `cmctl show node`.
pub fn node_detail(node: &Node) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    let mut row = |k: &str, v: String| add_row(&mut t, vec![k.to_string(), v]);
    let (free, capacity) = (node.free(), node.capacity);
    row("Node", node.id.to_string());
    row(
        "Role",
        match node.role {
            Role::Head => "Head",
            Role::Compute => "Compute",
        }
        .to_string(),
    );
    row("Status", node_status(node));
    if let Some(drain) = &node.drain {
        row("Drained", format!("since {} by {} (uid {})", drain.since, drain.by, drain.by_uid));
    }
    row("Address", node.address.clone());
    row("CPUs", format!("{} ({} free)", capacity.cpus, free.cpus));
    row("Memory", format!("{} MB ({} MB free)", capacity.memory_mb, free.memory_mb));
    row("GPUs", format!("{} ({} free)", capacity.gpus, free.gpus));
    let jobs: Vec<String> = node.allocations.iter().map(|a| a.job.to_string()).collect();
    row("Jobs", if jobs.is_empty() { "-".to_string() } else { jobs.join(", ") });
    row("Containment", if node.containment.is_empty() { "-".to_string() } else { node.containment.clone() });
    row(
        "Runs jobs of",
        node.only_uid.map_or_else(|| "every user".to_string(), |uid| format!("{} only", user_name(uid))),
    );
    row("Registered", node.registered_at.to_string());
    row("Last heartbeat", node.last_heartbeat.to_string());
    format!("{t}\n\n")
}

/// The "Head nodes" and "Compute nodes" tables, as in the original design.
pub fn nodes_tables(nodes: &[Node]) -> String {
    let heads: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Head).collect();
    let computes: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Compute).collect();
    format!("Head nodes\n{}\n\nCompute nodes\n{}\n", node_table(&heads), node_table(&computes))
}

/// The "Partitions" table: each partition's nodes grouped by status, as `sinfo` shows them; the
/// default partition's name ends in `*`.
pub fn partitions_table(partitions: &[PartitionInfo], nodes: &[Node]) -> String {
    let mut t = table(&PARTITION_COLUMNS);
    for info in partitions {
        let p = &info.partition;
        let name = if info.is_default { format!("{}*", p.name) } else { p.name.clone() };
        let limit = format_time_limit(p.max_time());
        let mut by_status: Vec<(String, Vec<&str>)> = Vec::new();
        for node in nodes.iter().filter(|n| n.role == Role::Compute && info.nodes.contains(&n.id)) {
            let status = node.status().to_string();
            match by_status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, ids)) => ids.push(node.id.as_str()),
                None => by_status.push((status, vec![node.id.as_str()])),
            }
        }
        if by_status.is_empty() {
            add_row(&mut t, vec![name.clone(), limit.clone(), "0".into(), "-".into(), "-".into()]);
        }
        for (status, ids) in by_status {
            add_row(&mut t, vec![name.clone(), limit.clone(), ids.len().to_string(), status, ids.join(",")]);
        }
    }
    format!("Partitions\n{t}\n")
}

/// One partition with every setting, for `cmctl show partition`.
pub fn partition_detail(info: &PartitionInfo) -> String {
    let p = &info.partition;
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    let mut row = |k: &str, v: String| add_row(&mut t, vec![k.to_string(), v]);
    let or = |list: &[String], none: &str| if list.is_empty() { none.to_string() } else { list.join(", ") };
    row("Partition", p.name.clone());
    row("Default", if info.is_default { "yes" } else { "no" }.to_string());
    row(
        "Nodes",
        format!(
            "{} ({})",
            or(&info.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "none now"),
            p.nodes.join(", ")
        ),
    );
    row("Priority", p.priority.to_string());
    row("Max time", format_time_limit(p.max_time()));
    row("Default time", format_time_limit(p.default_time()));
    row("Max nodes/job", p.max_nodes.map_or_else(|| "-".to_string(), |n| n.to_string()));
    row("Max running/user", p.max_running_per_user.map_or_else(|| "-".to_string(), |n| n.to_string()));
    row("Users", or(&p.allow_users, "everyone"));
    row("Groups", or(&p.allow_groups, "any"));
    format!("{t}\n\n")
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// The "Jobs" table; `left_out` pending or running jobs were not listed (`cminfo --limit`).
pub fn jobs_table(jobs: &[Job], left_out: u64) -> String {
    let mut t = table(&JOB_COLUMNS);
    for job in jobs {
        let nodes: Vec<&str> = job.nodes.iter().map(|n| n.node.as_str()).collect();
        add_row(
            &mut t,
            vec![
                job.display_id(),
                job.spec.name.clone(),
                job.spec.user.name.clone(),
                job.spec.partition.clone(),
                job.state.name().to_string(),
                job.priority.map(|p| p.to_string()).unwrap_or_default(),
                job.pending_reason.as_ref().map(|r| r.word.clone()).unwrap_or_default(),
                shorten(&shown(&job.spec.command), 40),
                nodes.join(", "),
            ],
        );
    }
    let mut text = format!("Jobs\n{t}\n");
    if left_out > 0 {
        text.push_str(&format!("... and {left_out} more pending or running jobs (cminfo --limit 0 lists them all)\n"));
    }
    text
}

/// CPU time as `[D-]HH:MM:SS.mmm`, as sacct shows TotalCPU; `-` if not measured.
pub fn cpu_time(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".to_string() };
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let days = if days > 0 { format!("{days}-") } else { String::new() };
    format!("{days}{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// Bytes in the largest whole unit: `512K`, `64.0M`, `1.5G`; `-` if not measured.
pub fn memory(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else { return "-".to_string() };
    let units = [("G", 1u64 << 30), ("M", 1 << 20)];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((unit, size)) => format!("{:.1}{unit}", bytes as f64 / *size as f64),
        None => format!("{}K", bytes.div_ceil(1024)),
    }
}

/// How a node's share of a job ended, in words.
fn end_cause(cause: &NodeEndCause) -> String {
    match cause {
        NodeEndCause::Exited => "Exited".to_string(),
        NodeEndCause::TimedOut => "TimedOut".to_string(),
        NodeEndCause::Killed => "Killed".to_string(),
        NodeEndCause::LaunchFailed { reason } => format!("LaunchFailed: {reason}"),
        NodeEndCause::Lost { reason } => format!("Lost: {reason}"),
        NodeEndCause::Aborted { reason } => format!("Aborted: {reason}"),
    }
}

/// Where a job's stdout and stderr go: rank 0's files on its first node once it has nodes, and
/// how the others are named; before that, the pattern with the job id filled in.
fn output_files(job: &Job) -> (String, String) {
    let spec = &job.spec;
    let patterns = [
        spec.stdout.as_deref().unwrap_or(cm_common::job::DEFAULT_STDOUT),
        spec.stderr.as_deref().unwrap_or(cm_common::job::DEFAULT_STDERR),
    ];
    let first = job.nodes.first().map(|n| job.output_paths(&n.node, 0));
    let describe = |i: usize, pattern: &str| {
        let whole = std::path::Path::new(&spec.workdir).join(pattern.replace("%j", &job.id.to_string()));
        match &first {
            Some(files) => {
                let file = if i == 0 { &files.0 } else { &files.1 };
                let others =
                    if spec.total_procs() > 1 { format!(" (rank 0; all: {})", whole.display()) } else { String::new() };
                format!("{}{others}", file.display())
            }
            None => whole.display().to_string(),
        }
    };
    (describe(0, patterns[0]), describe(1, patterns[1]))
}

/// One job with every field, for `cminfo JOBID`.
pub fn job_detail(job: &Job) -> String {
    let spec = &job.spec;
    let time = |t: Option<cm_common::Timestamp>| t.map_or_else(|| "-".to_string(), |t| t.to_string());
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    let mut row = |k: &str, v: String| add_row(&mut t, vec![k.to_string(), v]);
    row("Job", job.id.to_string());
    if let Some(task) = &job.array {
        let array = spec.array.as_ref().map(ToString::to_string).unwrap_or_default();
        row("Array", format!("{task} of array {} ({array})", task.array));
    }
    if !job.dependency.is_empty() {
        row("Waits for", cm_common::dependency::show(&job.dependency));
    }
    if !spec.dependency.is_empty() {
        row("Dependency", cm_common::dependency::show(&spec.dependency));
    }
    if spec.hold {
        row("Held", "by its owner (cmctl release releases it)".to_string());
    }
    row("Name", spec.name.clone());
    row("User", format!("{} (uid {})", spec.user.name, spec.user.uid));
    row("Status", job.state.name().to_string());
    if let Some(reason) = job.state.reason() {
        row("Reason", reason.to_string());
    }
    if let Some(pending) = &job.pending_reason {
        row("Reason", format!("{}: {}", pending.word, pending.sentence));
        if let Some(start) = pending.expected_start {
            let nodes: Vec<&str> = pending.reserved_nodes.iter().map(|n| n.as_str()).collect();
            row("Expected start", format!("{start} on {} (reserved)", nodes.join(", ")));
        }
    }
    if !spec.partition.is_empty() {
        row("Partition", spec.partition.clone());
    }
    if let Some(priority) = job.priority {
        row("Priority", priority.to_string());
    }
    for update in &job.updates {
        row("Changed", format!("{} by {} (uid {}): {}", update.at, update.by, update.by_uid, update.change));
    }
    match spec.priority {
        Some(0) => row("Priority set", "0: held by an operator (cmctl release)".to_string()),
        Some(fixed) => row("Priority set", format!("{fixed}, by an operator")),
        None if spec.nice != 0 => row("Nice", spec.nice.to_string()),
        None => {}
    }
    if let JobState::Killed { by_uid, .. } = &job.state {
        row("Killed by", user_name(*by_uid));
    }
    if let Some(code) = job.exit_code() {
        row("Exit code", code.to_string());
    }
    row("Command", spec.command.clone());
    row("Working dir", spec.workdir.clone());
    let nodes: Vec<&str> = job.nodes.iter().map(|n| n.node.as_str()).collect();
    row(
        "Nodes",
        if nodes.is_empty() { spec.nodes.to_string() } else { format!("{} ({})", spec.nodes, nodes.join(", ")) },
    );
    row("Processes/node", spec.procs_per_node.to_string());
    row("CPUs/node", spec.per_node.cpus.to_string());
    row("Memory/node", format!("{} MB", spec.per_node.memory_mb));
    if spec.per_node.gpus > 0 {
        row("GPUs/node", spec.per_node.gpus.to_string());
    }
    row("Time limit", format_time_limit(spec.time_limit()));
    row("Requeue", if spec.requeue { format!("on node loss (requeued {} times)", job.run) } else { "no".to_string() });
    row("Submitted", job.submitted_at.to_string());
    row("Started", time(job.state.started_at()));
    row("Ended", time(job.state.ended_at()));
    if let (Some(start), Some(end)) = (job.state.started_at(), job.state.ended_at()) {
        row(
            "Elapsed",
            humantime::format_duration(std::time::Duration::from_secs(end.since(start).as_secs())).to_string(),
        );
    }
    if let Some(usage) = job.usage() {
        row("CPU time", cpu_time(usage.cpu_time_ms));
        row("Peak memory", memory(usage.peak_memory_bytes));
        if usage.oom_kills > 0 {
            row("OOM kills", usage.oom_kills.to_string());
        }
    }
    let (stdout, stderr) = output_files(job);
    row("Stdout", stdout);
    row("Stderr", stderr);
    let mut out = format!("{t}\n");
    if !job.nodes.is_empty() {
        let mut per_node = table(&["Node", "Started", "Ended", "How", "Exit codes by rank", "CPU time", "Peak memory"]);
        for n in &job.nodes {
            let (ended, how, codes) = match &n.end {
                None => ("-".to_string(), "-".to_string(), String::new()),
                Some(end) => (
                    end.ended_at.to_string(),
                    end_cause(&end.cause),
                    end.replicas.iter().map(|r| format!("{}: {}", r.rank, r.status)).collect::<Vec<_>>().join(", "),
                ),
            };
            let usage = n.end.as_ref().and_then(|e| e.usage).unwrap_or_default();
            let (cpu, peak) = match n.end.as_ref().and_then(|e| e.usage) {
                Some(_) => (cpu_time(usage.cpu_time_ms), memory(usage.peak_memory_bytes)),
                None => ("-".to_string(), "-".to_string()),
            };
            add_row(&mut per_node, vec![n.node.to_string(), time(n.started_at), ended, how, codes, cpu, peak]);
        }
        out.push_str(&format!("{per_node}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::{JobSpec, UserIdentity};
    use cm_common::{JobId, NodeId, Resources, Timestamp};

    #[test]
    fn cpu_time_and_memory_read_as_sacct_shows_them() {
        assert_eq!(cpu_time(Some(3_723_004)), "01:02:03.004");
        assert_eq!(cpu_time(Some(86_400_000 + 5)), "1-00:00:00.005");
        assert_eq!(cpu_time(None), "-");
        assert_eq!(memory(Some(67_108_864)), "64.0M");
        assert_eq!(memory(Some(3 << 29)), "1.5G");
        assert_eq!(memory(Some(1000)), "1K");
        assert_eq!(memory(None), "-");
    }

    #[test]
    fn tables_have_the_stable_headers_and_values() {
        let node = Node {
            id: NodeId::new("c1"),
            role: Role::Compute,
            address: "tcp://c1:5002".into(),
            capacity: Resources::new(2, 512),
            allocations: vec![cm_common::node::Allocation { job: JobId(1), resources: Resources::new(1, 128) }],
            health: NodeHealth::Up,
            only_uid: None,
            containment: String::new(),
            drain: None,
            registered_at: Timestamp(0),
            last_heartbeat: Timestamp(0),
        };
        let text = nodes_tables(&[node]);
        for word in NODE_COLUMNS.iter().chain(["Compute nodes", "c1", "InUse", "384"].iter()) {
            assert!(text.contains(word), "{word} missing in\n{text}");
        }
        let spec = JobSpec {
            name: "scrape".into(),
            user: UserIdentity { uid: 1, name: "louie".into() },
            command: "./mini_scraper.sh -c".into(),
            workdir: "/home/louie".into(),
            ..JobSpec::example()
        };
        let job = Job::new(JobId(1), spec, Timestamp(0), String::new());
        let text = jobs_table(std::slice::from_ref(&job), 0);
        for word in JOB_COLUMNS.iter().chain(["scrape", "louie", "Pending"].iter()) {
            assert!(text.contains(word), "{word} missing in\n{text}");
        }
        assert!(!text.contains("more pending"), "{text}");
        assert!(jobs_table(std::slice::from_ref(&job), 9_999).contains("... and 9999 more pending or running jobs"));
        assert!(job_detail(&job).contains("/home/louie/cmlogs/1/%n.%r.out"), "{}", job_detail(&job));
    }

    #[test]
    fn listings_speak_in_words_and_names_and_keep_their_width() {
        let mut job = Job::new(JobId(3), JobSpec::example(), Timestamp(0), String::new());
        job.state = JobState::Killed { started_at: Some(Timestamp(1)), ended_at: Timestamp(2), by_uid: 0 };
        job.nodes = vec![cm_common::job::JobNode {
            node: NodeId::new("c1"),
            started_at: Some(Timestamp(1)),
            end: Some(cm_common::job::NodeEnd {
                ended_at: Timestamp(2),
                cause: NodeEndCause::Lost { reason: "node c1 went down".into() },
                replicas: vec![],
                usage: None,
            }),
        }];
        let text = job_detail(&job);
        assert!(text.contains("Killed by") && text.contains("root (uid 0)"), "{text}");
        assert!(text.contains("Lost: node c1 went down") && !text.contains("Lost {"), "{text}");
        assert!(text.contains("/home/alice/cmlogs/3/c1.0.out"), "rank 0's file, expanded: {text}");
        let pending = Job::new(JobId(4), JobSpec::example(), Timestamp(0), String::new());
        assert!(job_detail(&pending).lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Nodes", "1"]));
        let mut node = Node::new(NodeId::new("c9"), Role::Compute, String::new(), Resources::new(1, 1), Timestamp(0));
        node.health = NodeHealth::Down { since: Timestamp(0), reason: "x".repeat(500) };
        let table = nodes_tables(&[node.clone()]);
        assert!(table.contains('…') && !table.contains(&"x".repeat(100)), "{table}");
        assert!(node_detail(&node).contains(&"x".repeat(500)), "in full for one node");
    }

    #[test]
    fn what_users_wrote_cannot_drive_the_terminal_in_tables_or_json() {
        let spec = JobSpec {
            name: "evil\u{202e}gpj.exe".into(),
            command: "echo \u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\nnext".into(),
            workdir: "/tmp/\u{1b}[1m".into(),
            ..JobSpec::example()
        };
        let job = Job::new(JobId(1), spec, Timestamp(0), String::new());
        for text in [jobs_table(std::slice::from_ref(&job), 0), job_detail(&job)] {
            assert!(!text.chars().any(|c| (c.is_control() && c != '\n') || is_bidi_control(c)), "{text:?}");
            assert!(text.contains("\\u{1b}") && text.contains("\\u{202e}"), "{text}");
        }
        let json = json_shown(&serde_json::to_string_pretty(&job).expect("json"));
        assert!(!json.chars().any(|c| (c.is_control() && c != '\n') || is_bidi_control(c)), "{json:?}");
        let back: Job = serde_json::from_str(&json).expect("still JSON");
        assert_eq!(back.spec.command, job.spec.command, "the same strings, spelled safely");
        assert_eq!(back.spec.name, job.spec.name);
    }
}
