//! The tools as people use them at a terminal: a reader that stops early (`cminfo | head`)
//! ends a tool quietly, and Ctrl-C in `cmrun --wait` cancels the job and waits for its
//! processes to be gone.

use cm_testkit::{wait_until, Cluster};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn every_tool_writing_to_a_closed_pipe_ends_quietly_with_141() {
    let cluster = Cluster::start(1, 2, 512);
    let id = cluster.submit(&["true"]);
    cluster.wait_status(id, "Completed", LONG);
    let id = id.to_string();
    let runs: [(&str, &[&str]); 7] = [
        ("cminfo", &[]),
        ("cminfo", &["--all", "--json"]),
        ("cminfo", &[&id]),
        ("cminfo", &["--partitions"]),
        ("cmacct", &[]),
        ("cmctl", &["show", "node"]),
        ("cmrun", &["true"]),
    ];
    for (tool, args) in runs {
        // A pipe whose reader is gone before the tool starts: its first write fails.
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let out = cluster.tool_command(tool, args).stdout(Stdio::from(writer)).stderr(Stdio::piped()).output();
        let out = out.expect("run the tool");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{tool} {args:?}: {stderr}");
        assert!(stderr.is_empty(), "{tool} {args:?} said: {stderr}");
    }
}

/// Processes whose command line contains `text`. The jobs below spell their `sleep`'s argument
/// as an expression, so that only the replica's `sleep` has the number in its command line, not
/// `cmrun` nor the replica's shell.
fn processes_with(text: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", text]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Runs `cmrun --wait` on a job that sleeps `600 + n` seconds, sends cmrun `signal` once the
/// job runs, and returns cmrun's exit code, checking that the job's processes were gone by then.
fn cancelled_by(cluster: &Cluster, signal: nix::sys::signal::Signal, n: u32) -> Option<i32> {
    let sleeping = format!("sleep {}", 600 + n);
    let mut cmrun = cluster
        .tool_command("cmrun", &["--wait", &format!("sleep $((600 + {n}))")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cmrun");
    assert!(wait_until(LONG, || processes_with(&sleeping) > 0), "the job runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(cmrun.id() as i32), signal).expect("signal");
    let code = cmrun.wait().expect("cmrun ends").code();
    assert_eq!(processes_with(&sleeping), 0, "its processes were gone before cmrun returned");
    code
}

#[test]
fn ctrl_c_in_cmrun_wait_cancels_the_job_and_returns_once_its_processes_are_gone() {
    use nix::sys::signal::Signal;
    let cluster = Cluster::start(1, 2, 512);
    assert_eq!(cancelled_by(&cluster, Signal::SIGINT, 13), Some(130), "128 + SIGINT");
    let info = cluster.info().expect("cminfo");
    let job = &info["jobs"][0];
    assert_eq!(job["state"]["status"], "Killed", "{job}");
    // SIGTERM too, with its own code.
    assert_eq!(cancelled_by(&cluster, Signal::SIGTERM, 14), Some(143));
}

#[test]
fn every_tool_has_examples_in_its_help_a_man_page_and_completions() {
    for tool in ["cmrun", "cminfo", "cmkill", "cmacct", "cmctl"] {
        let run = |generate: Option<&str>, args: &[&str]| {
            let mut command = Command::new(cm_testkit::bin(tool));
            command.args(args).env_remove("CM_GENERATE");
            if let Some(what) = generate {
                command.env("CM_GENERATE", what);
            }
            let out = command.output().expect("run the tool");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, help, _) = run(None, &["--help"]);
        assert!(
            code == Some(0) && help.contains("Examples:") && help.contains(&format!("  {tool} ")),
            "{tool}: {help}"
        );
        assert!(!help.starts_with("Where the head is"), "{tool} describes itself first: {help}");
        let (code, man, _) = run(Some("man"), &[]);
        assert!(code == Some(0) && man.contains(&format!(".TH {tool} 1")) && man.contains("Examples"), "{tool}: {man}");
        for shell in ["bash", "zsh", "fish"] {
            let (code, completion, _) = run(Some(shell), &[]);
            assert!(code == Some(0) && completion.contains(tool) && completion.len() > 200, "{tool} {shell}");
        }
        let (code, _, said) = run(Some("tcsh"), &[]);
        assert!(code == Some(2) && said.contains("give man, bash"), "{tool}: {said}");
    }
}

#[test]
fn cminfo_filters_and_columns_select_what_they_say() {
    let cluster = Cluster::start(2, 1, 512);
    let first = cluster.submit(&["sleep 30"]);
    let second = cluster.submit(&["sleep 30"]);
    let waiting = cluster.submit(&["sleep 30"]);
    cluster.wait_status(first, "Running", LONG);
    let on_c2 = if cluster.wait_status(second, "Running", LONG)["nodes"][0]["node"] == "c2" { second } else { first };
    let json = |args: &[&str]| -> serde_json::Value {
        let out = cluster.tool("cminfo", args);
        assert!(out.status.success(), "cminfo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let ids = |value: &serde_json::Value| -> Vec<u64> {
        value["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_u64().expect("id")).collect()
    };
    assert_eq!(ids(&json(&["--state", "PENDING", "--json"])), [waiting]);
    assert_eq!(ids(&json(&["-w", "c2", "--json"])), [on_c2]);
    assert_eq!(ids(&json(&["--me", "--json"])), [first, second, waiting]);
    assert_eq!(ids(&json(&["-u", "65534", "--json"])), Vec::<u64>::new());
    let rows = json(&["-s", "running", "-o", "JobID,State,NodeList", "--json"]);
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let mut keys: Vec<&String> = rows[0].as_object().expect("row").keys().collect();
    keys.sort();
    assert_eq!(keys, ["jobid", "nodelist", "state"]);
    let out = cluster.tool("cminfo", &["-o", "JobID,Reason,Priority"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Reason") && table.contains(&waiting.to_string()) && !table.contains("Compute nodes"),
        "{table}"
    );
    for (args, says) in [(&["-u", "no-such-user"][..], "no user named"), (&["-o", "Bogus"][..], "Bogus")] {
        let out = cluster.tool("cminfo", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && err.contains(says) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    cluster.tool("cmkill", &[&first.to_string(), &second.to_string(), &waiting.to_string()]);
}

#[test]
fn cmrun_wait_shows_each_ranks_lines_while_the_job_still_runs() {
    use std::io::BufRead;
    let cluster = Cluster::start(2, 1, 512);
    let mut cmrun = cluster
        .tool_command("cmrun", &["--wait", "--label", "-n", "2", "echo first $CM_PROC_RANK; sleep 4; echo second >&2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cmrun");
    let mut lines = std::io::BufReader::new(cmrun.stdout.take().expect("stdout")).lines();
    let id: u64 = lines.next().expect("a line").expect("read").parse().expect("the job id first");
    let mut firsts = vec![lines.next().expect("a line").expect("read"), lines.next().expect("a line").expect("read")];
    // Both lines came while the job still runs (it sleeps 4 s after them).
    assert_eq!(cluster.job_status(id), "Running");
    firsts.sort();
    assert_eq!(firsts, ["0: first 0", "1: first 1"]);
    let out = cmrun.wait_with_output().expect("cmrun ends");
    assert_eq!(out.status.code(), Some(0));
    let mut seconds: Vec<String> = String::from_utf8_lossy(&out.stderr).lines().map(String::from).collect();
    seconds.sort();
    assert_eq!(seconds, ["0: second", "1: second"], "stderr lines go to stderr");
    assert!(lines.next().is_none(), "nothing more on stdout");
}
