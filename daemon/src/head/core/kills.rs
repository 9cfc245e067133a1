//! Cancelling jobs: one by id (`cmrun --wait` on Ctrl-C), or every job a selection names, in one
//! request, one store write and one sync however many it names (`cmkill`: ids, ranges, arrays,
//! array tasks, owners, states, names). A task that still waits in its array's record is split
//! off as a job of its own, cancelled, so that accounting shows it.

use super::*;
use std::collections::{HashMap, HashSet};

/// The most references and filters one cancel may carry: each costs a look at every active job.
const MAX_SELECTION: usize = 10_000;

impl HeadCore {
    pub(super) fn kill(&mut self, uid: u32, id: JobId, now: Timestamp) -> Reply<ClientResponse> {
        let mut job = match self.jobs.get(&id) {
            Some(job) => job.clone(),
            None => match self.ended_job(id).map_err(unavailable)? {
                Some(job) => return Err(invalid(format!("job {id} has already ended ({})", job.state.name()))),
                None => return Err(not_found(id)),
            },
        };
        if job.state.is_terminal() {
            return Err(invalid(format!("job {id} has already ended ({})", job.state.name())));
        }
        if uid != job.spec.user.uid && !self.is_operator(uid) {
            return Err(ErrorReply::new(ErrorCode::PermissionDenied, not_yours(&job)));
        }
        let previous_state = job.state.name().to_string();
        let still_running = cancel(&mut job, uid, now);
        let run = job.job_run();
        self.commit_now(vec![job], vec![]).map_err(unavailable)?;
        self.send_free(run, &still_running);
        self.wants_schedule = true;
        tracing::info!(job = %id, by = uid, "job killed");
        Ok(ClientResponse::JobKilled(JobKilled { id, previous_state }))
    }

    /// Cancels every pending or running job `selection` names that `uid` may cancel: their own,
    /// or any for root and the operators. Jobs named by id that cannot be cancelled get a line
    /// each in the reply; jobs only a filter names are left alone if they are another's.
    pub(super) fn kill_jobs(&mut self, uid: u32, selection: JobSelection, now: Timestamp) -> Reply<ClientResponse> {
        if selection.is_empty() {
            return Err(invalid("name the jobs to cancel, or select them (--me, --user, --state, --name)"));
        }
        let size = selection.jobs.len() + selection.users.len() + selection.states.len() + selection.names.len();
        if size > MAX_SELECTION {
            return Err(invalid(format!(
                "name at most {MAX_SELECTION} jobs, users, states and names in one request (use ranges: 100-200)"
            )));
        }
        if let Some(state) = selection.states.iter().find(|s| !JobState::NAMES.contains(&s.as_str())) {
            return Err(invalid(format!("there is no state {state:?}; the states are {}", JobState::NAMES.join(", "))));
        }
        let operator = self.is_operator(uid);
        let refs = &selection.jobs;
        let mut matched = vec![false; refs.len()];
        let mut refused = Vec::new();
        let users: HashSet<u32> = selection.users.iter().copied().collect();
        let states: HashSet<&str> = selection.states.iter().map(String::as_str).collect();
        let names: HashSet<&str> = selection.names.iter().map(String::as_str).collect();
        let filtered = |job: &Job| {
            (users.is_empty() || users.contains(&job.spec.user.uid))
                && (states.is_empty() || states.contains(job.state.name()))
                && (names.is_empty() || names.contains(job.spec.name.as_str()))
        };
        // Whole jobs: every active job a reference names (or, with none, every one the filters do).
        let mut cancelled: Vec<Job> = Vec::new();
        let mut records: HashSet<JobId> = HashSet::new();
        let index = RefIndex::of(refs);
        for job in self.jobs.values().filter(|j| !j.state.is_terminal()) {
            let named = index.naming(job);
            named.iter().for_each(|&i| matched[i] = true);
            if (!refs.is_empty() && named.is_empty()) || !filtered(job) {
                continue;
            }
            if job.spec.user.uid != uid && !operator {
                if !named.is_empty() {
                    refused.push(not_yours(job));
                }
                continue;
            }
            if job.array.as_ref().is_some_and(|a| !a.waiting.is_empty()) {
                records.insert(job.id);
            }
            cancelled.push(job.clone());
        }
        // Single tasks still waiting in their array's record: split off, then cancelled.
        let records_by_array: HashMap<JobId, JobId> = self
            .jobs
            .values()
            .filter_map(|j| j.array.as_ref().filter(|a| !a.waiting.is_empty()).map(|a| (a.array, j.id)))
            .collect();
        let mut split: BTreeMap<JobId, Job> = BTreeMap::new();
        for (i, r) in refs.iter().enumerate() {
            let JobRef::Task(array, task) = *r else { continue };
            if matched[i] {
                continue;
            }
            let record = records_by_array.get(&array).and_then(|id| self.jobs.get(id));
            let Some(record) = record.filter(|j| j.array.as_ref().is_some_and(|a| a.holds(task))).cloned() else {
                continue;
            };
            matched[i] = true;
            if records.contains(&record.id) || !filtered(&record) {
                continue; // cancelled whole already, or not selected
            }
            if record.spec.user.uid != uid && !operator {
                refused.push(not_yours(&record));
                continue;
            }
            let record = split.entry(record.id).or_insert(record);
            if !record.array.as_ref().is_some_and(|a| a.holds(task)) {
                continue; // named twice
            }
            let id = JobId(self.last_job_id.0 + 1);
            self.last_job_id = id;
            cancelled.push(record.take_task(task, id));
        }
        for (r, _) in refs.iter().zip(&matched).filter(|(_, matched)| !**matched) {
            refused.push(self.why_not_cancelled(r).map_err(unavailable)?);
        }
        let mut frees = Vec::new();
        let mut killed = Vec::new();
        for job in &mut cancelled {
            killed.push(job.display_id());
            if !job.state.is_terminal() {
                let nodes = cancel(job, uid, now);
                frees.push((job.job_run(), nodes));
            }
        }
        let count = cancelled.len();
        cancelled.extend(split.into_values());
        if !cancelled.is_empty() {
            self.commit_now(cancelled, vec![]).map_err(unavailable)?;
        }
        for (run, nodes) in frees {
            self.send_free(run, &nodes);
        }
        self.wants_schedule = true;
        tracing::info!(jobs = count, by = uid, "jobs killed");
        Ok(ClientResponse::JobsKilled(JobsKilled { killed, refused }))
    }

    /// Why a reference that names no active job cancelled nothing.
    fn why_not_cancelled(&self, r: &JobRef) -> Result<String, StoreError> {
        Ok(match *r {
            JobRef::Job(id) => match self.ended_job(id)? {
                Some(job) => format!("job {id} has already ended ({})", job.state.name()),
                None => format!("job {id} does not exist"),
            },
            JobRef::Task(array, task) => format!("array {array} has no task {task} pending or running"),
            JobRef::Range(first, last) => format!("no job from {first} to {last} is pending or running"),
        })
    }
}

/// The references of a selection, by what they name, so that each job is matched in a few
/// lookups however many there are.
struct RefIndex {
    /// By job or array id, and by (array, task): the references' positions.
    ids: HashMap<JobId, Vec<usize>>,
    tasks: HashMap<(JobId, u32), Vec<usize>>,
    ranges: Vec<(JobId, JobId, usize)>,
}

impl RefIndex {
    fn of(refs: &[JobRef]) -> RefIndex {
        let mut index = RefIndex { ids: HashMap::new(), tasks: HashMap::new(), ranges: Vec::new() };
        for (i, r) in refs.iter().enumerate() {
            match *r {
                JobRef::Job(id) => index.ids.entry(id).or_default().push(i),
                JobRef::Task(array, task) => index.tasks.entry((array, task)).or_default().push(i),
                JobRef::Range(first, last) => index.ranges.push((first, last, i)),
            }
        }
        index
    }

    /// The references that name all of `job`: its id, its array's id, a range it is in, or its
    /// task (a task of its own, not one waiting in a record).
    fn naming(&self, job: &Job) -> Vec<usize> {
        let mut named: Vec<usize> = self.ids.get(&job.id).cloned().unwrap_or_default();
        if let Some(a) = job.array.as_ref() {
            if a.array != job.id {
                named.extend(self.ids.get(&a.array).into_iter().flatten());
            }
            if a.waiting.is_empty() {
                named.extend(self.tasks.get(&(a.array, a.task)).into_iter().flatten());
            }
        }
        named.extend(self.ranges.iter().filter(|(first, last, _)| (first..=last).contains(&&job.id)).map(|r| r.2));
        named
    }
}

/// Marks `job` killed by `uid`; returns the nodes that still run it.
fn cancel(job: &mut Job, uid: u32, now: Timestamp) -> Vec<NodeId> {
    job.state = JobState::Killed { started_at: job.state.started_at(), ended_at: now, by_uid: uid };
    job.nodes.iter().filter(|n| n.end.is_none()).map(|n| n.node.clone()).collect()
}

fn not_yours(job: &Job) -> String {
    format!(
        "job {} belongs to {} (uid {}); only its owner, root or an operator may cancel it",
        job.display_id(),
        job.spec.user.name,
        job.spec.user.uid
    )
}
