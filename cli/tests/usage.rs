//! The tools' argument handling, without a cluster: bad input is refused with a clear message
//! and a non-zero exit, before anything is sent.

use std::process::Command;

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let path = match name {
        "cmrun" => env!("CARGO_BIN_EXE_cmrun"),
        "cminfo" => env!("CARGO_BIN_EXE_cminfo"),
        "cmacct" => env!("CARGO_BIN_EXE_cmacct"),
        _ => env!("CARGO_BIN_EXE_cmkill"),
    };
    // Nothing listens on port 9: anything that tried to reach a head would fail differently.
    Command::new(path).args(args).env("CM_HEAD", "127.0.0.1:9").env_remove("CM_CONFIG").output().expect("run")
}

#[test]
fn cmrun_needs_a_command() {
    let out = tool("cmrun", &["-n", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COMMAND"));
}

#[test]
fn cmrun_refuses_bad_numbers_and_limits_before_sending() {
    let out = tool("cmrun", &["-n", "two", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let out = tool("cmrun", &["-t", "1:2:3:4", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("cmrun: invalid time limit"), "{err}");
    let out = tool("cmrun", &["-n", "0", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one node"));
}

#[test]
fn cmkill_refuses_what_is_not_a_job_id() {
    let out = tool("cmkill", &["abc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"abc\" is not a job: give an id"));
}

#[test]
fn cmrun_passes_options_after_the_command_to_the_command() {
    // `-n` after the command belongs to the command, not to cmrun: parsing must not fail on it.
    let out = tool("cmrun", &["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--time-limit"));
}

#[test]
fn cmacct_names_an_unknown_field_state_time_or_user_before_sending() {
    for (args, said) in [
        (&["--format", "jobid,wattage"][..], "unknown field \"wattage\""),
        (&["--state", "done"][..], "unknown state \"done\""),
        (&["--starttime", "yesterday"][..], "cannot read the time \"yesterday\""),
        (&["--user", "no-such-user-here"][..], "no user named \"no-such-user-here\""),
    ] {
        let out = tool("cmacct", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("cmacct: ") && err.contains(said) && err.lines().count() == 1, "{args:?}: {err}");
    }
    let out = tool("cmacct", &["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("MaxRSS"), "the fields are listed in --help");
}
