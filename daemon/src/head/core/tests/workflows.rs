//! Arrays, throttles, dependencies, holds, bulk cancels, waits and finished jobs in memory,
//! through the head's state machine.

use super::*;
use cm_common::protocol::{JobRef, JobSelection, KillJobs, WaitJob};

/// Ends every running job whose every node runs it, as exited with `code`.
fn end_running(f: &mut Fixture, code: i32) -> Vec<JobId> {
    let running: Vec<(JobId, Vec<String>)> = f
        .core
        .jobs
        .values()
        .filter(|j| matches!(j.state, JobState::Running { .. }))
        .map(|j| (j.id, j.nodes.iter().map(|n| n.node.to_string()).collect()))
        .collect();
    for (id, nodes) in &running {
        for node in nodes {
            f.end(*id, node, &[(0, code)], NodeEndCause::Exited);
        }
    }
    running.into_iter().map(|(id, _)| id).collect()
}

fn pass(f: &mut Fixture) {
    f.core.schedule_if_needed(Timestamp(60));
    f.core.sync().expect("sync");
}

fn shown(f: &Fixture, id: JobId) -> String {
    f.core.stored_job(id).display_id()
}

/// Tasks of array `array` that ran or run, by task index.
fn tasks_run(f: &Fixture, array: JobId) -> Vec<u32> {
    let filter = JobFilter { arrays: vec![array], ..Default::default() };
    let mut tasks: Vec<u32> = f
        .core
        .store
        .finished_jobs(&filter, usize::MAX)
        .expect("finished")
        .iter()
        .chain(f.core.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. })))
        .filter(|j| j.array.as_ref().is_some_and(|a| a.array == array))
        .filter(|j| j.state.started_at().is_some())
        .map(|j| j.array.as_ref().map_or(0, |a| a.task))
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    tasks
}

#[test]
fn an_array_is_one_record_whose_tasks_split_off_as_they_start() {
    let mut f = Fixture::new(&["a", "b"]); // 4 CPUs: four 1-CPU tasks at a time
    let array = f.submit_ok(JobBuilder::new(0).array("0-9"), "t");
    assert_eq!(f.core.jobs.len(), 1, "one record, not ten jobs");
    assert_eq!(f.core.queued.all, 10, "each task counts toward the queue's limits");
    assert_eq!(shown(&f, array), "1_[0-9]");
    pass(&mut f);
    let started: Vec<String> = f.take_sent().into_iter().map(|(_, what)| what).collect();
    assert_eq!(started, ["start 2", "start 3", "start 4", "start 5"], "split off with ids of their own");
    assert_eq!(shown(&f, array), "1_[4-9]");
    assert_eq!(shown(&f, JobId(2)), "1_0");
    assert_eq!(f.core.queued.all, 10);
    for _ in 0..3 {
        end_running(&mut f, 0);
        pass(&mut f);
    }
    assert_eq!(shown(&f, array), "1_9", "the last task to start is the record itself");
    end_running(&mut f, 0);
    assert_eq!(f.core.queued.all, 0);
    assert_eq!(tasks_run(&f, array), (0..10).collect::<Vec<_>>());
    assert_eq!(f.state(array).name(), "Completed");
}

#[test]
fn a_throttled_array_never_runs_more_than_its_throttle() {
    let mut f = Fixture::new(&["a", "b"]);
    let array = f.submit_ok(JobBuilder::new(0).array("0-6%2"), "t");
    let other = f.submit_ok(JobBuilder::new(0), "u");
    let mut most = 0;
    for round in 0..5 {
        pass(&mut f);
        let running =
            f.core.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. }) && j.array.is_some()).count();
        most = most.max(running);
        if round == 0 {
            assert!(matches!(f.state(other), JobState::Running { .. }), "the throttle holds no one else up");
            let mut record = f.core.stored_job(array);
            f.core.explain_pending(std::slice::from_mut(&mut record), Timestamp(60));
            assert_eq!(record.pending_reason.map(|r| r.word), Some("JobArrayTaskLimit".into()));
        }
        end_running(&mut f, 0);
    }
    assert_eq!(most, 2);
    pass(&mut f);
    end_running(&mut f, 0);
    assert_eq!(tasks_run(&f, array), (0..7).collect::<Vec<_>>());
}

/// The state, after the target ended as given, of a job depending on it by `kind`.
fn dependant_after(kind: &str, target_code: Option<i32>, kill_invalid: bool) -> (JobState, Option<String>, bool) {
    let mut s = settings();
    s.scheduling.kill_invalid_depend = kill_invalid;
    let mut f = Fixture::with(s, &["a"]);
    let target = f.submit_ok(JobBuilder::new(0).cpus(2), "t");
    let dependant = f.submit_ok(JobBuilder::new(0).dependency(&format!("{kind}:{target}")), "d");
    pass(&mut f);
    let started_alongside = f.core.stored_job(dependant).state != JobState::Pending;
    match target_code {
        Some(code) => {
            end_running(&mut f, code);
        }
        None => {
            f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id: target }), Timestamp(30)).expect("kill");
            f.end(target, "a", &[(0, 143)], NodeEndCause::Killed);
        }
    }
    pass(&mut f);
    let job = f.core.stored_job(dependant);
    (job.state, job.dependency_never, started_alongside)
}

#[test]
fn dependencies_start_or_never_start_as_their_kind_and_the_outcome_say() {
    use JobState::*;
    // (kind, the target's exit code or None if killed, the dependant's state after)
    let table: [(&str, Option<i32>, &str); 9] = [
        ("afterok", Some(0), "Running"),
        ("afterok", Some(1), "Pending"),
        ("afterok", None, "Pending"),
        ("afternotok", Some(0), "Pending"),
        ("afternotok", Some(1), "Running"),
        ("afternotok", None, "Running"),
        ("afterany", Some(0), "Running"),
        ("afterany", Some(1), "Running"),
        ("after", Some(1), "Running"),
    ];
    for (kind, code, expected) in table {
        let (state, never, alongside) = dependant_after(kind, code, false);
        assert_eq!(state.name(), expected, "{kind} after exit {code:?}");
        assert!(!alongside || kind == "after", "{kind} must not start alongside its target");
        assert_eq!(never.is_some(), expected == "Pending", "{kind} after {code:?}: {never:?}");
    }
    let (state, _, _) = dependant_after("afterok", Some(1), true);
    assert!(matches!(state, DependencyNeverSatisfied { .. }), "kill_invalid_depend ends it: {state:?}");
    assert_eq!(state.reason().map(|r| r.contains("did not complete")), Some(true));
}

#[test]
fn a_dependency_on_an_array_waits_for_every_task() {
    let mut f = Fixture::new(&["a"]);
    let array = f.submit_ok(JobBuilder::new(0).array("0-3"), "t");
    let after = f.submit_ok(JobBuilder::new(0).dependency(&format!("afterok:{array}")), "d");
    for _ in 0..2 {
        pass(&mut f);
        assert_eq!(f.core.stored_job(after).state, JobState::Pending);
        end_running(&mut f, 0);
    }
    pass(&mut f);
    assert!(matches!(f.state(after), JobState::Running { .. }), "{:?}", f.state(after));
    let refused = f.submit(JobBuilder::new(0).dependency("afterok:999"), "x").expect_err("no job 999");
    assert!(refused.message.contains("999"), "{}", refused.message);
}

#[test]
fn a_dependency_on_jobs_that_left_memory_is_read_from_the_store() {
    let mut s = settings();
    s.limits.max_finished_in_memory = 1;
    let mut f = Fixture::with(s, &["a"]);
    let array = f.submit_ok(JobBuilder::new(0).array("0-3").cpus(2), "t");
    for _ in 0..4 {
        pass(&mut f);
        end_running(&mut f, 0);
    }
    let failed = f.submit_ok(JobBuilder::new(0).cpus(2), "f");
    pass(&mut f);
    end_running(&mut f, 1);
    for _ in 0..3 {
        let id = f.submit_ok(JobBuilder::new(0).cpus(2), &format!("o{}", f.core.last_job_id));
        pass(&mut f);
        let _ = id;
        end_running(&mut f, 0);
    }
    assert!(f.core.finished.get(array).is_none() && f.core.finished.get(failed).is_none(), "they left memory");
    let ok = f.submit_ok(JobBuilder::new(0).dependency(&format!("afterok:{array}")), "ok");
    let not_ok = f.submit_ok(JobBuilder::new(0).dependency(&format!("afternotok:{failed}")), "nok");
    let never = f.submit_ok(JobBuilder::new(0).dependency(&format!("afterok:{failed}")), "never");
    pass(&mut f);
    assert!(matches!(f.state(ok), JobState::Running { .. }), "{:?}", f.state(ok));
    assert!(matches!(f.state(not_ok), JobState::Running { .. }), "{:?}", f.state(not_ok));
    assert!(f.core.stored_job(never).dependency_never.is_some());
}

#[test]
fn singleton_runs_one_job_of_a_name_at_a_time() {
    let mut f = Fixture::new(&["a"]);
    let first = f.submit_ok(JobBuilder::new(0).name("nightly").dependency("singleton"), "1");
    let second = f.submit_ok(JobBuilder::new(0).name("nightly").dependency("singleton"), "2");
    let other = f.submit_ok(JobBuilder::new(0).name("other").dependency("singleton"), "3");
    pass(&mut f);
    assert!(matches!(f.state(first), JobState::Running { .. }));
    assert_eq!(f.state(second), JobState::Pending);
    assert!(matches!(f.state(other), JobState::Running { .. }));
    end_running(&mut f, 0);
    pass(&mut f);
    assert!(matches!(f.state(second), JobState::Running { .. }));
}

#[test]
fn owners_hold_and_release_their_jobs_and_not_an_operators_hold() {
    let mut f = Fixture::new(&["a"]);
    let held = f.submit_ok(JobBuilder::new(0).hold(), "h");
    pass(&mut f);
    assert_eq!(f.state(held), JobState::Pending);
    let mut job = f.core.stored_job(held);
    f.core.explain_pending(std::slice::from_mut(&mut job), Timestamp(60));
    assert_eq!(job.pending_reason.map(|r| r.word), Some("JobHeldUser".into()));
    let denied = update(&mut f, BOB, held, vec![JobChange::Release]).expect_err("not bob's");
    assert_eq!(denied.code, ErrorCode::PermissionDenied);
    update(&mut f, ALICE, held, vec![JobChange::Release]).expect("released by its owner");
    pass(&mut f);
    assert!(matches!(f.state(held), JobState::Running { .. }));

    let pinned = f.submit_ok(JobBuilder::new(0), "p");
    update(&mut f, 0, pinned, vec![JobChange::Priority(0)]).expect("an operator's hold");
    update(&mut f, ALICE, pinned, vec![JobChange::Release]).expect("the owner's release is taken");
    assert_eq!(f.core.stored_job(pinned).spec.priority, Some(0), "but lifts no operator's hold");
    update(&mut f, 0, pinned, vec![JobChange::Release]).expect("an operator's release");
    assert_eq!(f.core.stored_job(pinned).spec.priority, None);
    let own = f.submit_ok(JobBuilder::new(0), "o");
    update(&mut f, ALICE, own, vec![JobChange::Hold]).expect("an owner holds a pending job");
    assert!(f.core.stored_job(own).spec.hold);
}

fn kill_jobs(f: &mut Fixture, uid: u32, selection: JobSelection) -> Reply<(Vec<String>, Vec<String>)> {
    match f.core.handle_client(uid, ClientRequest::KillJobs(KillJobs { selection }), Timestamp(40)) {
        Ok(ClientResponse::JobsKilled(k)) => Ok((k.killed, k.refused)),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    }
}

#[test]
fn bulk_cancel_takes_ids_ranges_tasks_and_filters_in_one_write() {
    let mut f = Fixture::new(&["a"]);
    let blocker = f.submit_ok(JobBuilder::new(0).cpus(2), "b");
    pass(&mut f);
    let mine: Vec<JobId> = (0..5).map(|i| f.submit_ok(JobBuilder::new(0).name("sweep"), &format!("m{i}"))).collect();
    let bobs = f.submit_as(BOB, JobBuilder::new(0).name("sweep"), "bob");
    let Ok(ClientResponse::JobAccepted(JobAccepted { id: bobs, .. })) = bobs else { panic!("{bobs:?}") };
    let array = f.submit_ok(JobBuilder::new(0).array("0-9"), "arr");

    // One task waiting in the record, and a range.
    let range = JobRef::Range(mine[0], mine[1]);
    let (killed, refused) =
        kill_jobs(&mut f, ALICE, JobSelection { jobs: vec![JobRef::Task(array, 3), range], ..Default::default() })
            .expect("kill");
    assert_eq!(killed, ["2", "3", "8_3"]);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(shown(&f, array), "8_[0-2,4-9]");
    assert_eq!(f.core.queued.all, 1 + 3 + 1 + 9);

    // Filters: alice's pending jobs named sweep; bob's is left alone.
    let by_name = JobSelection { names: vec!["sweep".into()], states: vec!["Pending".into()], ..Default::default() };
    let (killed, refused) = kill_jobs(&mut f, ALICE, by_name).expect("kill");
    assert_eq!(killed.len(), 3);
    assert!(refused.is_empty());
    assert_eq!(f.state(bobs), JobState::Pending);

    // Named by id: bob's is refused with a line, alice's whole array goes.
    let (killed, refused) = kill_jobs(
        &mut f,
        ALICE,
        JobSelection {
            jobs: vec![JobRef::Job(bobs), JobRef::Job(array), JobRef::Job(JobId(999))],
            ..Default::default()
        },
    )
    .expect("kill");
    assert_eq!(killed, ["8_[0-2,4-9]"]);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("belongs to") && refused[1].contains("does not exist"), "{refused:?}");
    assert_eq!(f.core.queued.all, 2, "the blocker and bob's");
    assert!(kill_jobs(&mut f, ALICE, JobSelection::default()).is_err(), "nothing named is refused");
    let _ = blocker;
}

#[test]
fn cancelling_five_thousand_pending_jobs_is_one_sync() {
    let mut f = Fixture::new(&["a"]);
    f.submit_ok(JobBuilder::new(0).cpus(2), "b");
    pass(&mut f);
    for i in 0..5000 {
        f.submit_ok(JobBuilder::new(0), &format!("j{i}"));
    }
    f.failing_sync.store(false, Ordering::Relaxed);
    let (killed, _) =
        kill_jobs(&mut f, ALICE, JobSelection { states: vec!["Pending".into()], ..Default::default() }).expect("kill");
    assert_eq!(killed.len(), 5000);
    assert_eq!(f.core.queued.all, 1);
    // All of it or nothing: with the store failing, nothing is cancelled.
    for i in 0..3 {
        f.submit_ok(JobBuilder::new(0), &format!("k{i}"));
    }
    f.failing_sync.store(true, Ordering::Relaxed);
    let failed = kill_jobs(&mut f, ALICE, JobSelection { states: vec!["Pending".into()], ..Default::default() });
    assert_eq!(failed.expect_err("the store is down").code, ErrorCode::Unavailable);
    assert_eq!(f.core.queued.all, 4);
}

#[test]
fn a_wait_is_answered_when_the_job_is_placed_and_when_it_ends() {
    let mut f = Fixture::new(&["a"]);
    let id = f.submit_ok(JobBuilder::new(0), "t");
    let wait = |known_run| WaitJob { id, known_run, timeout_ms: 1000 };
    assert!(f.core.wait_answer(ALICE, &wait(None), Timestamp(20)).is_none(), "pending: nothing to say yet");
    pass(&mut f);
    let placed = f.core.wait_answer(ALICE, &wait(None), Timestamp(20)).expect("placed");
    assert!(matches!(placed, Ok(ClientResponse::Job(ref r)) if !r.job.nodes.is_empty()));
    assert!(f.core.wait_answer(ALICE, &wait(Some(0)), Timestamp(20)).is_none(), "running, as the waiter knows");
    end_running(&mut f, 3);
    match f.core.wait_answer(ALICE, &wait(Some(0)), Timestamp(20)) {
        Some(Ok(ClientResponse::Job(reply))) => assert_eq!(reply.job.exit_code(), Some(3)),
        other => panic!("{other:?}"),
    }
    // A cancelled job is answered once its node has confirmed the end, not at the cancel.
    let cancelled = f.submit_ok(JobBuilder::new(0), "c");
    pass(&mut f);
    f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id: cancelled }), Timestamp(30)).expect("kill");
    let wait_cancelled = WaitJob { id: cancelled, known_run: Some(0), timeout_ms: 1000 };
    assert!(f.core.wait_answer(ALICE, &wait_cancelled, Timestamp(30)).is_none(), "its processes may still run");
    f.end(cancelled, "a", &[(0, 143)], NodeEndCause::Killed);
    assert!(f.core.wait_answer(ALICE, &wait_cancelled, Timestamp(30)).is_some());
    let unknown = WaitJob { id: JobId(99), known_run: None, timeout_ms: 1 };
    assert_eq!(
        f.core.wait_answer(ALICE, &unknown, Timestamp(20)).expect("answered").unwrap_err().code,
        ErrorCode::NotFound
    );
    let request = HeadRequest::Client(ClientRequest::WaitJob(WaitJob { id, known_run: Some(0), timeout_ms: 1000 }));
    assert!(matches!(f.core.handle(&Identity::User(ALICE), request, Timestamp(20)), HeadReply::Client(Ok(_))));
}

#[test]
fn finished_jobs_leave_memory_after_min_job_age_and_are_read_from_the_store() {
    let mut s = settings();
    s.limits.min_job_age = Duration::from_secs(300);
    s.limits.max_finished_in_memory = 5;
    let mut f = Fixture::with(s, &["a"]);
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(f.submit_ok(JobBuilder::new(0).cpus(2).env("BIG", "x"), &format!("t{i}")));
        pass(&mut f);
        end_running(&mut f, 0);
    }
    assert_eq!(f.core.finished.len(), 5, "never more than the cap");
    assert!(f.core.finished.get(ids[0]).is_none() && f.core.finished.get(ids[7]).is_some());
    f.core.tick(Timestamp(50 + 300_001));
    assert_eq!(f.core.finished.len(), 0, "all older than min_job_age");
    match f.core.handle_client(ALICE, ClientRequest::GetJob(GetJob { id: ids[0] }), Timestamp(400_000)) {
        Ok(ClientResponse::Job(reply)) => {
            assert_eq!(reply.job.state.name(), "Completed");
            assert_eq!(reply.job.spec.env.get("BIG").map(String::as_str), Some("x"), "whole, from the store");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn arrays_dependencies_and_holds_survive_a_restart() {
    let mut f = Fixture::new(&["a"]);
    let array = f.submit_ok(JobBuilder::new(0).array("0-5%1"), "t");
    let after = f.submit_ok(JobBuilder::new(0).dependency(&format!("afterany:{array}")), "d");
    let held = f.submit_ok(JobBuilder::new(0).hold(), "h");
    pass(&mut f);
    end_running(&mut f, 0);
    pass(&mut f);
    f.core.sync().expect("sync");
    // A new head on the same store.
    let store = std::mem::replace(&mut f.core.store, Box::new(NullStore));
    let me = f.core.me.clone();
    let mut core = HeadCore::open(store, Box::new(f.sent.clone()), me, settings(), Timestamp(70)).expect("reopen");
    assert_eq!(core.stored_job(array).display_id(), "1_[2-5]");
    assert_eq!(core.stored_job(after).dependency.len(), 1);
    assert!(core.stored_job(held).spec.hold);
    assert_eq!(core.queued.all, 4 + 1 + 1 + 1, "the record's four, the running task, the dependant, the held");
    core.schedule(Timestamp(80));
    let running = core.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. })).count();
    assert_eq!(running, 1, "the throttle still holds");
}

/// A store that holds nothing, to stand in for one moved to a new head.
struct NullStore;

impl Store for NullStore {
    fn last_job_id(&self) -> Result<JobId, StoreError> {
        Ok(JobId(0))
    }
    fn save(&mut self, _: &[&Job], _: &[&Node]) -> Result<(), StoreError> {
        Ok(())
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn save_now(&mut self, _: &[&Job], _: &[&Node]) -> Result<(), StoreError> {
        Ok(())
    }
    fn job(&self, _: JobId) -> Result<Option<Job>, StoreError> {
        Ok(None)
    }
    fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        Ok(vec![])
    }
    fn finished_jobs(&self, _: &JobFilter, _: usize) -> Result<Vec<Job>, StoreError> {
        Ok(vec![])
    }
    fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        Ok(vec![])
    }
    fn remove_node(&mut self, _: &NodeId) -> Result<(), StoreError> {
        Ok(())
    }
}
