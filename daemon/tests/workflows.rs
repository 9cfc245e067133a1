//! Workflows end to end, with real daemons and tools: throttled arrays, dependency chains,
//! holds, batch directives, bulk cancels, and finished jobs read back from the store, across a
//! head killed with SIGKILL and restarted.

use cm_testkit::{wait_until, Cluster, StoreKind, TEST_CONFIG};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every job of array `array` (its tasks, by index) as cmacct lists them.
fn array_tasks(cluster: &Cluster, array: u64) -> Vec<serde_json::Value> {
    let out = cluster.tool("cmacct", &["--json", "--array", &array.to_string(), "-o", "JobID,State"]);
    assert!(out.status.success(), "{}", text(&out).1);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json")
}

fn a_throttled_array_runs_every_task_once_never_more_than_its_throttle_across_a_head_restart(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 2, 4, 4096);
    let script = "echo $CM_ARRAY_JOB_ID $CM_ARRAY_TASK_ID $CM_ARRAY_TASK_COUNT $CM_ARRAY_TASK_MIN $CM_ARRAY_TASK_MAX; \
                  date +%s%N > spans/$CM_ARRAY_TASK_ID.start; sleep 0.4; date +%s%N > spans/$CM_ARRAY_TASK_ID.end";
    std::fs::create_dir_all(cluster.workdir.join("spans")).expect("dir");
    let array = cluster.submit(&["--array", "1-9:2,20%2", "-o", "out/%A_%a.txt", script]);
    let info = cluster.info().expect("cminfo");
    let listed = info["jobs"].as_array().expect("jobs").iter().any(|j| j["array"]["array"] == array);
    assert!(listed, "the array is listed in --json: {info:#}");
    let table = text(&cluster.tool("cminfo", &[])).0;
    assert!(table.contains(&format!("{array}_[")), "one line for the waiting tasks:\n{table}");

    // Kill the head while tasks run; the array goes on where it was.
    assert!(wait_until(LONG, || cluster.workdir.join("spans/3.start").exists()));
    cluster.restart_head();
    let done = wait_until(LONG, || {
        let tasks = array_tasks(&cluster, array);
        tasks.len() == 6 && tasks.iter().all(|t| t["state"] == "Completed")
    });
    assert!(done, "{:#?}", array_tasks(&cluster, array));
    let mut spans = Vec::new();
    for task in [1, 3, 5, 7, 9, 20] {
        let out = std::fs::read_to_string(cluster.workdir.join(format!("out/{array}_{task}.txt"))).expect("output");
        assert_eq!(out.trim(), format!("{array} {task} 6 1 20"), "task {task} ran once, with its variables");
        let read = |end: &str| -> u128 {
            std::fs::read_to_string(cluster.workdir.join(format!("spans/{task}.{end}")))
                .expect("span")
                .trim()
                .parse()
                .expect("ns")
        };
        spans.push((read("start"), read("end")));
    }
    let most = spans.iter().map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count()).max();
    assert_eq!(most, Some(2), "at most two at once: {spans:?}");
    cluster.assert_alive();
}

fn an_afterok_chain_runs_in_order_and_a_failed_steps_dependants_get_the_right_state(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 2, 2048);
    let first = cluster.submit(&["sleep 1; echo first >> chain"]);
    let second = cluster.submit(&["-d", &format!("afterok:{first}"), "echo second >> chain"]);
    let third = cluster.submit(&["-d", &format!("afterok:{second}"), "echo third >> chain"]);
    let failing = cluster.submit(&["-d", &format!("afterany:{third}"), "exit 3"]);
    let never = cluster.submit(&["-d", &format!("afterok:{failing}"), "echo never >> chain"]);
    let rescue = cluster.submit(&["-d", &format!("afternotok:{failing}"), "echo rescue >> chain"]);
    let waiting = cluster.job(second);
    assert_eq!(waiting["pending_reason"]["word"], "Dependency", "{waiting:#}");
    cluster.restart_head();
    cluster.wait_status(rescue, "Completed", LONG);
    let job = cluster.job(never);
    assert_eq!(job["state"]["status"], "Pending");
    assert_eq!(job["pending_reason"]["word"], "DependencyNeverSatisfied", "{job:#}");
    assert_eq!(cluster.job_status(failing), "Failed");
    let chain = std::fs::read_to_string(cluster.workdir.join("chain")).expect("chain");
    assert_eq!(chain, "first\nsecond\nthird\nrescue\n");
    let out = cluster.tool("cmkill", &[&never.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    cluster.assert_alive();
}

#[test]
fn a_job_whose_dependency_can_never_be_met_ends_with_kill_invalid_depend() {
    let config = format!("{TEST_CONFIG}scheduling:\n  kill_invalid_depend: true\n");
    let cluster = Cluster::start_with(&StoreKind::Embedded, 1, 2, 2048, &config, "info");
    let failing = cluster.submit(&["exit 1"]);
    let never = cluster.submit(&["-d", &format!("afterok:{failing}"), "true"]);
    let job = cluster.wait_status(never, "DependencyNeverSatisfied", LONG);
    assert!(job["state"]["reason"].as_str().unwrap_or_default().contains("did not complete"), "{job:#}");
}

#[test]
fn held_jobs_wait_until_released_and_directives_are_applied_then_overridden() {
    let mut cluster = Cluster::start(2, 2, 2048);
    let held = cluster.submit(&["--hold", "true"]);
    std::thread::sleep(Duration::from_millis(600));
    let job = cluster.job(held);
    assert_eq!(job["pending_reason"]["word"], "JobHeldUser", "{job:#}");
    let out = cluster.tool("cmctl", &["release", &held.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    cluster.wait_status(held, "Completed", LONG);

    let script = cluster.workdir.join("job.sh");
    let text_of_script = "#!/bin/sh\n#CM -a fromscript\n#CM -n 2 --time-limit 5 -o out.%r\n\necho $CM_NNODES $1\n";
    std::fs::write(&script, text_of_script).expect("script");
    let from_script = cluster.submit(&["job.sh", "an argument"]);
    let job = cluster.wait_status(from_script, "Completed", LONG);
    assert_eq!((job["spec"]["name"].as_str(), job["spec"]["nodes"].as_u64()), (Some("fromscript"), Some(2)));
    assert_eq!(job["spec"]["time_limit_secs"], 300);
    let out = std::fs::read_to_string(cluster.workdir.join("out.1")).expect("output");
    assert_eq!(out, "2 an argument\n", "run through its interpreter, with its argument");
    let overridden = cluster.submit(&["-a", "mine", "-n", "1", "job.sh"]);
    let job = cluster.wait_status(overridden, "Completed", LONG);
    assert_eq!((job["spec"]["name"].as_str(), job["spec"]["nodes"].as_u64()), (Some("mine"), Some(1)));
    std::fs::write(&script, "#!/bin/sh\n#CM --nodes lots\ntrue\n").expect("script");
    let out = cluster.tool("cmrun", &["job.sh"]);
    assert!(!out.status.success() && text(&out).1.contains("#CM lines of job.sh"), "{:?}", text(&out));
    std::fs::write(&script, "#!/bin/sh\n#CM --bogus 3\ntrue\n").expect("script");
    let out = cluster.tool("cmrun", &["job.sh"]);
    assert!(!out.status.success() && text(&out).1.contains("\"--bogus\" is not an option"), "{:?}", text(&out));
    cluster.assert_alive();
}

fn bulk_cancel_takes_arrays_tasks_and_filters_and_survives_a_restart(store: StoreKind) {
    let mut cluster = Cluster::start_on(&store, 1, 1, 2048);
    let blocker = cluster.submit(&["sleep 30"]);
    cluster.wait_status(blocker, "Running", LONG);
    let array = cluster.submit(&["--array", "0-99", "true"]);
    let named: Vec<u64> = (0..20).map(|_| cluster.submit(&["-a", "sweep", "true"])).collect();
    let out = cluster.tool("cmkill", &[&format!("{array}_7"), &format!("{array}_8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains(&format!("{array}_7")), "{:?}", text(&out));
    let out = cluster.tool("cmkill", &["--name", "sweep"]);
    assert!(out.status.success() && text(&out).0.contains("killed 20 jobs"), "{:?}", text(&out));
    cluster.restart_head();
    assert!(wait_until(LONG, || cluster.info().is_some()));
    for id in &named {
        assert_eq!(cluster.job_status(*id), "Killed");
    }
    let table = text(&cluster.tool("cminfo", &[])).0;
    assert!(table.contains(&format!("{array}_[0-6,9-99]")), "{table}");
    let out = cluster.tool("cmkill", &[&array.to_string(), "99999"]);
    assert_eq!(out.status.code(), Some(1), "a job that does not exist is an error: {:?}", text(&out));
    assert!(text(&out).1.contains("99999 does not exist"), "{:?}", text(&out));
    let task = |t: &str| -> serde_json::Value {
        let out = cluster.tool("cminfo", &["--json", &format!("{array}_{t}")]);
        assert!(out.status.success(), "{:?}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    assert_eq!(task("7")["array"]["task"], 7, "a task split off, cancelled");
    assert_eq!(task("50")["id"], array, "a task that waited in the record is shown by the record");
    let out = cluster.tool("cminfo", &[&format!("{array}_100")]);
    assert!(!out.status.success() && text(&out).1.contains("has no task 100"), "{:?}", text(&out));
    let killed: Vec<serde_json::Value> = array_tasks(&cluster, array);
    assert!(killed.iter().all(|t| t["state"] == "Killed"), "{killed:#?}");
    assert_eq!(killed.len(), 3, "tasks 7 and 8, and the record with the other 98: {killed:#?}");
    cluster.assert_alive();
}

fn a_finished_job_is_read_back_from_the_store_once_it_left_memory(store: StoreKind) {
    let config = format!("{TEST_CONFIG}limits:\n  min_job_age: 1s\n");
    let mut cluster = Cluster::start_with(&store, 1, 2, 2048, &config, "info");
    let out = cluster.tool("cmrun", &["--wait", "echo done; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
    assert!(text(&out).0.contains("done"), "--wait shows the output: {:?}", text(&out));
    let id: u64 = text(&out).0.lines().next().and_then(|l| l.trim().parse().ok()).expect("id");
    std::thread::sleep(Duration::from_millis(1500)); // past min_job_age, and a tick
    assert_eq!(cluster.job_status(id), "Failed");
    cluster.restart_head();
    assert!(wait_until(LONG, || cluster.info().is_some()));
    assert_eq!(cluster.job_status(id), "Failed");
    let out = cluster.tool("cmacct", &["-j", &id.to_string(), "-o", "JobID,State,ExitCode", "--json"]);
    assert!(text(&out).0.contains("Failed"), "{:?}", text(&out));
    cluster.assert_alive();
}

cm_testkit::on_both_stores!(
    a_throttled_array_runs_every_task_once_never_more_than_its_throttle_across_a_head_restart,
    an_afterok_chain_runs_in_order_and_a_failed_steps_dependants_get_the_right_state,
    bulk_cancel_takes_arrays_tasks_and_filters_and_survives_a_restart,
    a_finished_job_is_read_back_from_the_store_once_it_left_memory,
);
