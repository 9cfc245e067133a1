//! The users' side of the head: who may do what (from the identity the inbox proved), and the
//! tools' requests: listings, one job, submissions (checked against the limits and the nodes
//! that are up) and kills.

use super::*;

/// The uid that anonymous listings are made as: no job is theirs, and no operator has it.
const ANONYMOUS: u32 = u32::MAX;

/// What the head answers a request with.
pub enum HeadReply {
    Client(Reply<ClientResponse>),
    Compute(Reply<ComputeResponse>),
    /// Nothing yet: a [`WaitJob`] from `uid`, to be answered once [`HeadCore::wait_answer`]
    /// has an answer for it.
    Later(u32, WaitJob),
}

impl HeadCore {
    /// Answers a request from `identity`, as proven by the inbox: user tools ask as users,
    /// daemons of the cluster as daemons; nothing else is taken.
    pub fn handle(&mut self, identity: &Identity, request: HeadRequest, now: Timestamp) -> HeadReply {
        match (identity, request) {
            (Identity::User(uid), HeadRequest::Client(ClientRequest::WaitJob(wait))) => {
                match self.wait_answer(*uid, &wait, now) {
                    Some(reply) => HeadReply::Client(reply),
                    None => HeadReply::Later(*uid, wait),
                }
            }
            (Identity::User(uid), HeadRequest::Client(req)) => HeadReply::Client(self.handle_client(*uid, req, now)),
            (Identity::Anonymous, HeadRequest::Client(req)) => HeadReply::Client(self.handle_anonymous(req)),
            (Identity::Daemon(sender), HeadRequest::Compute(req)) => {
                HeadReply::Compute(self.handle_compute(&NodeId::new(sender.as_str()), req, now))
            }
            (Identity::Daemon(_), HeadRequest::Client(_)) => HeadReply::Client(Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                "user requests must come from a user's tool, not from a daemon",
            ))),
            (_, HeadRequest::Compute(_)) => HeadReply::Compute(Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "only the cluster's daemons may register nodes or report jobs: seal requests with the cluster key",
            ))),
        }
    }

    /// A request over TCP with no credential: listings if the operator allows them, else nothing.
    fn handle_anonymous(&mut self, request: ClientRequest) -> Reply<ClientResponse> {
        let listing = matches!(request, ClientRequest::FetchNodes(_) | ClientRequest::FetchJobs(_));
        if listing && self.settings.anonymous_listing && !self.settings.private_data {
            return self.handle_client(ANONYMOUS, request, Timestamp::now());
        }
        Err(ErrorReply::new(
            ErrorCode::Unauthenticated,
            "the head takes requests over TCP only with a MUNGE credential: run munged on this host \
             (with the cluster's munge.key), or use the tools on the head's host, over its Unix socket",
        ))
    }

    /// Root, or a user named in `operators` (by name or uid).
    pub(super) fn is_operator(&mut self, uid: u32) -> bool {
        if uid == 0 {
            return true;
        }
        if uid == ANONYMOUS || self.settings.operators.is_empty() {
            return false;
        }
        let name = self.user_names.name(uid, "");
        self.settings.operators.iter().any(|op| *op == name || *op == uid.to_string())
    }

    /// A user's request; `uid` is proven (the kernel or MUNGE said so).
    pub fn handle_client(&mut self, uid: u32, request: ClientRequest, now: Timestamp) -> Reply<ClientResponse> {
        match request {
            ClientRequest::FetchNodes(_) => {
                let mut nodes = vec![self.me.clone()];
                nodes.extend(self.nodes.values().cloned());
                Ok(ClientResponse::Nodes(NodesReply { nodes, partitions: self.partition_infos() }))
            }
            ClientRequest::FetchJobs(req) => {
                let only = (self.settings.private_data && !self.is_operator(uid)).then_some(uid);
                self.fetch_jobs(req, only, now)
            }
            ClientRequest::GetJob(GetJob { id }) => {
                // A finished job kept in memory is a summary: the store has it whole.
                let mut job = match self.jobs.get(&id) {
                    Some(job) => job.clone(),
                    None => self.store.job(id).map_err(unavailable)?.ok_or_else(|| not_found(id))?,
                };
                self.show_job(uid, &mut job, now)?;
                Ok(ClientResponse::Job(JobReply { job }))
            }
            ClientRequest::WaitJob(wait) => self
                .wait_answer(uid, &wait, now)
                .unwrap_or_else(|| Err(invalid("a wait is answered when the job changes"))),
            ClientRequest::AssignJobId(req) => self.submit(uid, req, now),
            ClientRequest::KillJob(KillJob { id }) => self.kill(uid, id, now),
            ClientRequest::KillJobs(KillJobs { selection }) => self.kill_jobs(uid, selection, now),
            ClientRequest::AdministerNode(req) => self.administer(uid, req, now),
            ClientRequest::UpdateJob(req) => self.update_job(uid, req, now),
            ClientRequest::InjectFault(req) => self.inject_fault(uid, req),
        }
    }

    /// Makes `job` fit for `uid` to see: another's environment is left out (it holds their
    /// secrets), and with `private_data` another's job is not found.
    fn show_job(&mut self, uid: u32, job: &mut Job, now: Timestamp) -> Result<(), ErrorReply> {
        if job.spec.user.uid != uid && !self.is_operator(uid) {
            if self.settings.private_data {
                return Err(not_found(job.id));
            }
            job.spec.env.clear();
        }
        self.explain_pending(std::slice::from_mut(job), now);
        Ok(())
    }

    /// The answer to `wait` now, if it has one: the job once it has settled (ended, and every
    /// node has confirmed its processes are gone) or been placed in a run other than the one the
    /// waiter knows; `None` while neither has happened and the
    /// waiter's time is not up (the head's loop holds the request until then).
    pub fn wait_answer(&mut self, uid: u32, wait: &WaitJob, now: Timestamp) -> Option<Reply<ClientResponse>> {
        let id = wait.id;
        let mut job = match self.jobs.get(&id).or_else(|| self.finished.get(id)) {
            Some(job) => {
                // Settled, not only ended: a cancelled job's processes are gone by then.
                let placed = !job.nodes.is_empty() && wait.known_run != Some(job.run);
                if !job.is_settled() && !placed {
                    return None;
                }
                job.clone()
            }
            None => match self.store.job(id) {
                Ok(Some(job)) => job,
                Ok(None) => return Some(Err(not_found(id))),
                Err(e) => return Some(Err(unavailable(e))),
            },
        };
        job.spec.env.clear(); // a waiter follows states, not environments
        Some(self.show_job(uid, &mut job, now).map(|()| ClientResponse::Job(JobReply { job })))
    }

    /// Pending and running jobs (and finished ones if asked), of user `only` if given.
    fn fetch_jobs(&self, req: FetchJobs, only: Option<u32>, now: Timestamp) -> Reply<ClientResponse> {
        let limit = req.limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let visible = |job: &Job| only.is_none_or(|uid| job.spec.user.uid == uid) && req.filter.matches(job);
        let mut jobs: Vec<Job> = Vec::new();
        if req.include_finished {
            // The store is asked for visible jobs only, so that the limit counts those.
            let mut filter = req.filter.clone();
            let asks_for_others = only.is_some_and(|uid| !filter.users.is_empty() && !filter.users.contains(&uid));
            if let Some(uid) = only {
                filter.users = vec![uid];
            }
            if !asks_for_others {
                jobs = self.store.finished_jobs(&filter, limit).map_err(unavailable)?;
            }
            jobs.retain(visible);
            jobs.iter_mut().for_each(|j| j.spec.env.clear());
        }
        // Running jobs first, then the oldest pending ones: what a user looks for in a long queue.
        let active = || self.jobs.values().filter(|j| !j.state.is_terminal() && visible(j));
        let running = active().filter(|j| j.state != JobState::Pending);
        let pending = active().filter(|j| j.state == JobState::Pending);
        let listed: Vec<Job> = running.chain(pending).take(limit).map(Job::summary).collect();
        let left_out = (active().count() - listed.len()) as u64;
        jobs.extend(listed);
        jobs.sort_by_key(|j| j.id);
        self.explain_pending(&mut jobs, now);
        Ok(ClientResponse::Jobs(JobsReply { jobs, left_out }))
    }

    fn submit(&mut self, uid: u32, req: AssignJobId, now: Timestamp) -> Reply<ClientResponse> {
        if let Some(id) = self.tokens.get(&req.token) {
            // A retry of a submit we already took.
            return Ok(ClientResponse::JobAccepted(JobAccepted { id, warning: None }));
        }
        let mut spec = req.spec;
        spec.validate().map_err(invalid)?;
        spec.check_limits(&self.settings.limits).map_err(invalid)?;
        // Root may submit for anyone (as SLURM's `sbatch --uid`); everyone else as themselves.
        if uid != 0 && uid != spec.user.uid {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!("uid {uid} cannot submit a job that runs as uid {}", spec.user.uid),
            ));
        }
        spec.user.name = self.user_names.name(spec.user.uid, &spec.user.name);
        let tasks = spec.array.as_ref().map_or(1, |a| a.tasks.count());
        let max_tasks = self.settings.limits.max_array_tasks;
        if tasks > u64::try_from(max_tasks).unwrap_or(u64::MAX) {
            return Err(invalid(format!(
                "the array has {tasks} tasks, over the limit of {max_tasks} (limits.max_array_tasks in the head's config.yaml)"
            )));
        }
        self.check_queue_has_room(spec.user.uid, usize::try_from(tasks).unwrap_or(usize::MAX))?;
        self.check_dependencies(&spec.dependency)?;
        let partition = self.admit_to_partition(uid, &mut spec)?;
        self.check_cluster_can_fit(&spec, partition)?;
        let warning = self.settings.workdirs.concern(&spec.workdir);
        if let (Some(concern), Unshared::Refuse) = (&warning, self.settings.workdirs.unshared) {
            return Err(invalid(format!("{concern}; submit from a shared directory")));
        }
        let id = JobId(self.last_job_id.0 + 1);
        let job = Job::new(id, spec, now, req.token);
        self.commit_now(vec![job], vec![]).map_err(unavailable)?;
        self.last_job_id = id;
        self.wants_schedule = true;
        tracing::info!(job = %id, tasks, "job submitted");
        Ok(ClientResponse::JobAccepted(JobAccepted { id, warning }))
    }

    /// Refuses `jobs` more jobs (an array's tasks) beyond the queue's limits: all users' pending
    /// and running jobs together, and the submitting user's.
    fn check_queue_has_room(&self, uid: u32, jobs: usize) -> Result<(), ErrorReply> {
        let limits = &self.settings.limits;
        let (all, mine) = (self.queued.all, self.queued.of_user(uid));
        let full = |what: String| Err(ErrorReply::new(ErrorCode::Unavailable, what));
        if jobs > 1
            && (all.saturating_add(jobs) > limits.max_jobs || mine.saturating_add(jobs) > limits.max_jobs_per_user)
        {
            return full(format!(
                "the array's {jobs} tasks do not fit in the queue: {all} jobs are pending or running ({mine} yours), the limits are {} and {} per user (limits.max_jobs, limits.max_jobs_per_user)",
                limits.max_jobs, limits.max_jobs_per_user
            ));
        }
        if all >= limits.max_jobs {
            return full(format!(
                "the queue is full: {all} jobs are pending or running, the limit (limits.max_jobs); submit again when some have ended"
            ));
        }
        if mine >= limits.max_jobs_per_user {
            return full(format!(
                "you have {mine} jobs pending or running, the limit per user (limits.max_jobs_per_user); submit again when some have ended"
            ));
        }
        Ok(())
    }

    /// Puts the job in its partition (the default one if it names none) with the partition's
    /// default time limit if it has none, or refuses it: a partition that does not exist, that
    /// is not open to the user, whose limits it exceeds; and a priority or nice value the user
    /// may not set. Returns the partition's index.
    fn admit_to_partition(&mut self, uid: u32, spec: &mut JobSpec) -> Result<usize, ErrorReply> {
        let Some(p) = self.partition_of(spec) else {
            let names: Vec<&str> = self.partitions.iter().map(|rules| rules.partition.name.as_str()).collect();
            return Err(invalid(format!(
                "there is no partition {:?}; the partitions are {} (cminfo --partitions)",
                spec.partition,
                names.join(", ")
            )));
        };
        // Asked first: it needs the head mutably, and the checks below borrow the partition.
        let operator = (spec.priority.is_some() || spec.nice < 0) && self.is_operator(uid);
        let rules = &self.partitions[p];
        let partition = &rules.partition;
        spec.partition = partition.name.clone();
        let groups = if partition.allow_groups.is_empty() {
            Vec::new()
        } else {
            crate::head::user_names::groups_of(spec.user.uid)
        };
        if !partition.allows(spec.user.uid, &spec.user.name, &groups) {
            let mut open_to = Vec::new();
            if !partition.allow_users.is_empty() {
                open_to.push(format!("users {}", partition.allow_users.join(", ")));
            }
            if !partition.allow_groups.is_empty() {
                open_to.push(format!("members of groups {}", partition.allow_groups.join(", ")));
            }
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!(
                    "partition {} is open only to {}; {} is not among them",
                    partition.name,
                    open_to.join(" and to "),
                    spec.user.name
                ),
            ));
        }
        if spec.time_limit_secs.is_none() {
            spec.time_limit_secs = rules.default_time().map(|d| d.as_secs());
        }
        if let Some(refusal) = rules.refuses(spec.nodes, spec.time_limit()) {
            return Err(invalid(refusal));
        }
        if (spec.priority.is_some() || spec.nice < 0) && !operator {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                "only root and the operators may fix a job's priority (--priority) or raise it (a negative --nice)",
            ));
        }
        Ok(p)
    }

    /// Refuses at once a job that the nodes of its partition that are up could never run,
    /// however long it waited.
    fn check_cluster_can_fit(&self, spec: &JobSpec, partition: usize) -> Result<(), ErrorReply> {
        let rules = &self.partitions[partition];
        let computes: Vec<&Node> = self.nodes.values().filter(|n| n.role == Role::Compute).collect();
        if computes.is_empty() {
            return Err(invalid(
                "no compute node has registered with the head yet; start compute daemons (cmd --role compute) and submit again",
            ));
        }
        let computes: Vec<&Node> = computes.into_iter().filter(|n| rules.has_node(&n.id)).collect();
        let within =
            if self.partitions.len() > 1 { format!(" in partition {}", spec.partition) } else { String::new() };
        let up: Vec<&Node> = computes.iter().copied().filter(|n| n.is_up()).collect();
        let big_enough: Vec<&Node> = up.iter().copied().filter(|n| n.capacity.contains(&spec.per_node)).collect();
        let allowed: Vec<&Node> = big_enough.iter().copied().filter(|n| n.can_run_as(spec.user.uid)).collect();
        let usable = allowed.iter().filter(|n| u64::from(spec.procs_per_node) <= self.max_procs(n)).count();
        let wanted = usize::try_from(spec.nodes).unwrap_or(usize::MAX);
        if usable >= wanted {
            return Ok(());
        }
        let down = computes.len() - up.len();
        let gpus = match spec.per_node.gpus {
            0 => String::new(),
            n => format!(" and {n} GPU(s)"),
        };
        let mut message = format!(
            "the job asks for {} node(s) with {} CPU(s), {} MB{gpus} each, but the cluster has {} compute node(s) up{within}{} and only {} that large",
            spec.nodes,
            spec.per_node.cpus,
            spec.per_node.memory_mb,
            up.len(),
            if down > 0 { format!(" ({down} down)") } else { String::new() },
            big_enough.len()
        );
        if allowed.len() < big_enough.len() {
            message.push_str(&format!(
                ", of which {} may run jobs of uid {} (the others' daemons do not run as root)",
                allowed.len(),
                spec.user.uid
            ));
        }
        if usable < allowed.len() {
            message.push_str(&format!(
                ", and {} process(es) per node is more than {} per CPU (limits.max_procs_per_cpu) of {} of them",
                spec.procs_per_node,
                self.settings.limits.max_procs_per_cpu,
                allowed.len() - usable
            ));
        }
        message.push_str("; ask for fewer nodes, processes or resources per node");
        Err(invalid(message))
    }

    /// The most processes one job may start on `node`.
    pub(super) fn max_procs(&self, node: &Node) -> u64 {
        u64::from(self.settings.limits.max_procs_per_cpu) * u64::from(node.capacity.cpus)
    }
}
