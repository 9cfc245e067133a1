//! The wire protocol: every message cm sends, in one place.
//!
//! Every message travels in an [`Envelope`] (protocol version, sender, how it is authenticated,
//! body) encoded as MessagePack with named fields, so fields can be added without breaking older
//! peers. The body is itself MessagePack, carried as bytes, so that a credential can cover exactly
//! those bytes ([`Auth`]). There is one request enum per direction, each variant wrapping a named
//! struct, and each reply is `Result<Response, ErrorReply>`:
//!
//! | direction        | request enum                   | response enum      |
//! |------------------|--------------------------------|--------------------|
//! | client -> head   | [`ClientRequest`] (in [`HeadRequest::Client`])   | [`ClientResponse`]  |
//! | compute -> head  | [`ComputeRequest`] (in [`HeadRequest::Compute`]) | [`ComputeResponse`] |
//! | head -> compute  | [`NodeRequest`]                | [`NodeResponse`]   |
//!
//! The version is checked before anything else is decoded, so a peer from another release gets a
//! clear [`ErrorCode::VersionMismatch`] instead of a decoding failure.

use crate::job::{Job, JobFilter, JobRun, JobSpec, NodeEnd};
use crate::node::Node;
use crate::partition::PartitionInfo;
use crate::{Error, JobId, NodeId, Resources, Result, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped whenever a change breaks decoding by the previous release. 2: job reports travel in
/// batches ([`ReportJobs`]). 3: the body travels as bytes under an [`Auth`]. 4: MPI fences
/// ([`ReportFence`], [`FenceDone`]). 5: arrays, dependencies, holds, [`KillJobs`], [`WaitJob`].
pub const PROTOCOL_VERSION: u16 = 5;

/// How a message proves where it comes from. Nothing in a message says who its sender is: the
/// receiver learns it from the kernel (a Unix socket's peer), from MUNGE, or from the cluster key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// Nothing: a tool on a Unix socket (the kernel names its user), a reply, or a stranger.
    None,
    /// A MUNGE credential whose payload is the SHA-256 of the body: a user's tool over TCP.
    Munge { credential: String },
    /// The body is sealed with the cluster key (XChaCha20-Poly1305): a daemon of the cluster.
    /// `at_ms` (when it was sealed) and `nonce` make every message unique, so a replay is refused.
    Sealed {
        at_ms: u64,
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
}

/// The frame around every message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// Node id or `tool@host` of the sender: a name for logs, and for sealed messages the name
    /// the seal covers. Never an identity by itself.
    pub sender: String,
    pub auth: Auth,
    /// The MessagePack body (sealed: its ciphertext).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The borrowed form of [`Envelope`], so encoding copies nothing.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    version: u16,
    sender: &'a str,
    auth: &'a Auth,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

/// Only the version, decoded first so a foreign version never reaches the body decoder.
#[derive(Deserialize)]
struct EnvelopeHeader {
    version: u16,
}

/// A reply: the response, or an error saying what went wrong.
pub type Reply<T> = std::result::Result<T, ErrorReply>;

/// Encodes a body (the bytes an [`Envelope`] carries).
pub fn encode_body<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(body).map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a body.
pub fn decode_body<B: DeserializeOwned>(bytes: &[u8]) -> Result<B> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
}

/// Encodes a message for the wire.
pub fn encode_envelope(sender: &str, auth: &Auth, body: &[u8]) -> Result<Vec<u8>> {
    let envelope = EnvelopeRef { version: PROTOCOL_VERSION, sender, auth, body };
    rmp_serde::to_vec_named(&envelope).map_err(|e| Error::Encode(e.to_string()))
}

/// Encodes `body` in an envelope with no credential: replies, and tools on a Unix socket.
pub fn encode<B: Serialize>(sender: &str, body: &B) -> Result<Vec<u8>> {
    encode_envelope(sender, &Auth::None, &encode_body(body)?)
}

/// Decodes a message's envelope from the wire, checking the protocol version first.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope> {
    let header: EnvelopeHeader =
        rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(format!("no valid envelope: {e}")))?;
    if header.version != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: header.version });
    }
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
}

/// Decodes an envelope and its body as it stands (no credential checked): for replies to tools
/// and for tests.
pub fn decode<B: DeserializeOwned>(bytes: &[u8]) -> Result<(Envelope, B)> {
    let envelope = decode_envelope(bytes)?;
    let body = decode_body(&envelope.body)?;
    Ok((envelope, body))
}

/// What kind of error a reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The bytes were not a message of this protocol.
    BadRequest,
    /// The sender speaks another protocol version.
    VersionMismatch,
    /// The request is well-formed but asks for something impossible or invalid.
    Invalid,
    /// The named job or node does not exist.
    NotFound,
    /// The sender may not do this (e.g. kill another user's job).
    PermissionDenied,
    /// The request carries no credential the receiver takes, or one it refused.
    Unauthenticated,
    /// The receiver cannot serve the request right now (e.g. its store is down); retry later.
    Unavailable,
    /// The head does not know the sending node; it should register again.
    UnknownNode,
    /// A bug on the receiving side.
    Internal,
}

/// The generic error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// A sentence for the user, saying what to do.
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

/// Everything the head receives, on its one port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HeadRequest {
    Client(ClientRequest),
    Compute(ComputeRequest),
}

// ---------------------------------------------------------------- client -> head

/// Requests from the user tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    FetchNodes(FetchNodes),
    FetchJobs(FetchJobs),
    GetJob(GetJob),
    /// Submit: the head stores the job and assigns its id.
    AssignJobId(AssignJobId),
    KillJob(KillJob),
    /// An operator's order about a node (`cmctl`): root and `operators` only.
    AdministerNode(AdministerNode),
    /// A change to a pending job (`cmctl update job`); answered with the job as it is after.
    UpdateJob(UpdateJob),
    /// A fault, on purpose, for teaching and testing (`cmctl fault`): root and `operators` only.
    InjectFault(InjectFault),
    /// Cancel every job a selection names, in one request and one store sync (`cmkill`).
    KillJobs(KillJobs),
    /// One job, once it has ended and its nodes have confirmed its processes are gone, or been
    /// placed in a run other than `known_run`, or once `timeout_ms` has passed (`cmrun --wait`):
    /// the head answers when that happens, not when asked again.
    WaitJob(WaitJob),
}

/// The jobs a request names: by id, id range or array task, and by owner, state and name. A
/// job is selected if it matches every filter given (an empty one matches all) and, if any
/// references are given, one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSelection {
    #[serde(default)]
    pub jobs: Vec<JobRef>,
    /// Owners, by uid.
    #[serde(default)]
    pub users: Vec<u32>,
    /// States, by name (`Pending`, `Running`).
    #[serde(default)]
    pub states: Vec<String>,
    /// Job names.
    #[serde(default)]
    pub names: Vec<String>,
}

impl JobSelection {
    /// Whether it names no job at all: no reference and no filter.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.users.is_empty() && self.states.is_empty() && self.names.is_empty()
    }
}

/// A job as a user names it: `12` (for an array, every task), `12_7` (one task of array 12),
/// `100-200` (every job with an id in the range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobRef {
    Job(JobId),
    Task(JobId, u32),
    Range(JobId, JobId),
}

impl std::str::FromStr for JobRef {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<JobRef, String> {
        let id = |s: &str| -> std::result::Result<JobId, String> {
            match s.parse::<u64>() {
                Ok(n) if n > 0 => Ok(JobId(n)),
                _ => Err(format!("{text:?} is not a job: give an id (12), an array task (12_7) or a range (12-40)")),
            }
        };
        if let Some((array, task)) = text.split_once('_') {
            let task = task.parse::<u32>().map_err(|_| format!("{text:?}: {task:?} is not an array task index"))?;
            return Ok(JobRef::Task(id(array)?, task));
        }
        if let Some((first, last)) = text.split_once('-') {
            let (first, last) = (id(first)?, id(last)?);
            if first > last {
                return Err(format!("the range {text:?} runs backwards"));
            }
            return Ok(JobRef::Range(first, last));
        }
        id(text).map(JobRef::Job)
    }
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRef::Job(id) => write!(f, "{id}"),
            JobRef::Task(array, task) => write!(f, "{array}_{task}"),
            JobRef::Range(first, last) => write!(f, "{first}-{last}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillJobs {
    pub selection: JobSelection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitJob {
    pub id: JobId,
    /// The run the waiter has seen placed; `None`: none yet.
    #[serde(default)]
    pub known_run: Option<u32>,
    /// The longest the head holds the request (it may answer sooner: see `MAX_WAIT_MS`).
    pub timeout_ms: u32,
}

/// The longest the head holds a [`WaitJob`], well within a tool's request timeout.
pub const MAX_WAIT_MS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectFault {
    pub fault: Fault,
}

/// A fault an operator injects, to watch the cluster detect it and recover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// The node's daemon exits at once, as in a crash: no goodbye, its jobs keep running under
    /// their supervisors until whatever restarts daemons brings it back.
    Crash { node: NodeId },
    /// The node's daemon stops, as if hung, for `seconds`: no heartbeats, no answers. Its jobs
    /// keep running.
    Freeze { node: NodeId, seconds: u32 },
    /// The node is cut off from the head for `seconds`: its daemon runs and its jobs too, but
    /// nothing passes between it and the head.
    Isolate { node: NodeId, seconds: u32 },
    /// One rank of a running job is killed (SIGKILL), as if it crashed.
    KillRank { job: JobId, rank: u64 },
}

/// The longest freeze or isolation.
pub const MAX_FAULT_SECONDS: u32 = 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchNodes {}

/// Jobs come as summaries (`Job::summary`: no environment); `GetJob` returns one job in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchJobs {
    /// Also return finished jobs (the most recent `limit`).
    #[serde(default)]
    pub include_finished: bool,
    /// At most this many pending and running jobs (running ones first, then the oldest pending),
    /// and at most this many finished ones; `None`: all of them. A queue of 10,000 jobs is
    /// listed in a fraction of the time its whole table would take to send and print.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only jobs this filter matches (`cmacct`); the default matches all.
    #[serde(default)]
    pub filter: JobFilter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetJob {
    pub id: JobId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignJobId {
    pub spec: JobSpec,
    /// Unique per submission: a retried request with the same token gets the same id back.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillJob {
    pub id: JobId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdministerNode {
    pub node: NodeId,
    pub action: NodeAction,
}

/// What an operator may do to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeAction {
    /// Take no new job; the running ones finish (Draining, then Drained).
    Drain { reason: String },
    /// Take jobs again.
    Resume,
    /// Forget the node (one that is gone for good); refused while it runs jobs.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateJob {
    pub id: JobId,
    pub changes: Vec<JobChange>,
}

/// What may change in a pending job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobChange {
    /// Fix its priority (0 holds it): root and the operators only.
    Priority(u32),
    /// Work its priority out again from age, partition and nice (releases a hold).
    AutoPriority,
    /// Its nice value: the owner may lower the job's priority (0 and up), operators anything.
    Nice(i32),
    /// Hold it (`cmctl hold`): its owner or an operator.
    Hold,
    /// Release its owner's hold, and an operator's too if an operator asks (`cmctl release`).
    Release,
}

impl std::fmt::Display for JobChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobChange::Priority(p) => write!(f, "priority={p}"),
            JobChange::AutoPriority => write!(f, "priority=auto"),
            JobChange::Nice(n) => write!(f, "nice={n}"),
            JobChange::Hold => write!(f, "hold"),
            JobChange::Release => write!(f, "release"),
        }
    }
}

/// Responses to [`ClientRequest`]s, one per request variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Nodes(NodesReply),
    Jobs(JobsReply),
    Job(JobReply),
    JobAccepted(JobAccepted),
    JobKilled(JobKilled),
    NodeAdministered(NodeAdministered),
    FaultInjected(FaultInjected),
    JobsKilled(JobsKilled),
}

/// What a [`KillJobs`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsKilled {
    /// The jobs cancelled, as tables name them (`42`, `12_7`, `12_[8-99]`).
    pub killed: Vec<String>,
    /// One line for each job named that was not cancelled, and why.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesReply {
    pub nodes: Vec<Node>,
    /// The head's partitions, in the order configured, with the nodes in each.
    #[serde(default)]
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsReply {
    /// In id order.
    pub jobs: Vec<Job>,
    /// How many pending and running jobs the limit left out.
    #[serde(default)]
    pub left_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReply {
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAccepted {
    pub id: JobId,
    /// Something the submitter should know (the working directory is not shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Where a fault was injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultInjected {
    pub node: NodeId,
}

/// The node as it is after the order; `None` once removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAdministered {
    pub node: Option<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobKilled {
    pub id: JobId,
    /// The state the job was in when the kill arrived.
    pub previous_state: String,
}

// ---------------------------------------------------------------- compute -> head

/// Requests from compute daemons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ComputeRequest {
    RegisterNode(RegisterNode),
    Heartbeat(Heartbeat),
    ReportJobs(ReportJobs),
    /// The node is going away for good (`cmd --leave-on-stop`): the head ends its jobs as lost
    /// and forgets it.
    LeaveCluster(LeaveCluster),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaveCluster {
    pub node: NodeId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterNode {
    pub node: NodeId,
    /// Endpoint the head reaches this node at.
    pub address: String,
    pub capacity: Resources,
    /// See [`Node::only_uid`].
    #[serde(default)]
    pub only_uid: Option<u32>,
    /// Job runs the node has right now (after a daemon restart, for reconciliation).
    #[serde(default)]
    pub running: Vec<JobRun>,
    /// How the node contains its jobs: see [`Node::containment`].
    #[serde(default)]
    pub containment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    #[serde(default)]
    pub running: Vec<JobRun>,
}

/// A node's job starts and ends, oldest first: whatever its link had queued, in one request that
/// the head applies in order and makes durable with one disk sync. All or nothing: an error reply
/// means the node sends the same reports again (the head ignores what it already has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportJobs {
    pub reports: Vec<JobReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobReport {
    /// The node's replicas started.
    Start(ReportJobStart),
    /// The node's replicas ended: exit statuses, cause.
    End(ReportJobEnd),
    /// The node's ranks of an MPI job have all reached a fence.
    Fence(ReportFence),
}

/// All of a node's ranks of a job run have reached PMI fence `epoch`, having put `puts` since
/// the last one. Once every node of the job has reported the same fence, the head sends each
/// a [`FenceDone`]; a repeated report (the node's daemon restarted) gets it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFence {
    pub node: NodeId,
    pub job: JobId,
    pub run: u32,
    pub epoch: u32,
    pub puts: Vec<(String, String)>,
}

impl ReportFence {
    pub fn job_run(&self) -> JobRun {
        JobRun { job: self.job, run: self.run }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportJobStart {
    pub node: NodeId,
    pub job: JobId,
    /// Which run of the job (see `Job::run`).
    #[serde(default)]
    pub run: u32,
    pub started_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportJobEnd {
    pub node: NodeId,
    pub job: JobId,
    /// Which run of the job (see `Job::run`).
    #[serde(default)]
    pub run: u32,
    pub end: NodeEnd,
    /// When the replicas started here, for an end whose start was not reported on its own (a job
    /// that ended before its node sent the start report carries the start in its end).
    #[serde(default)]
    pub started_at: Option<Timestamp>,
}

impl ReportJobStart {
    pub fn job_run(&self) -> JobRun {
        JobRun { job: self.job, run: self.run }
    }
}

impl ReportJobEnd {
    pub fn job_run(&self) -> JobRun {
        JobRun { job: self.job, run: self.run }
    }
}

/// Responses to [`ComputeRequest`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ComputeResponse {
    Registered(Registered),
    HeartbeatAck(HeartbeatAck),
    Ack(Ack),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// How often the head wants heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Job runs the node reported that the head has already ended or moved: kill them.
    #[serde(default)]
    pub kill: Vec<JobRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Job runs the node reports that the head has already ended or moved: kill them.
    #[serde(default)]
    pub kill: Vec<JobRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {}

// ---------------------------------------------------------------- head -> compute

/// Requests from the head to a compute daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    GetNodeStatus(GetNodeStatus),
    /// Asks whether the node could host a job's share right now.
    HostJob(HostJob),
    StartJob(StartJob),
    /// Kill the job's replicas on this node and release what they hold.
    FreeResources(FreeResources),
    /// Every node of an MPI job has reached a fence: here is what all of them put.
    FenceDone(FenceDone),
    /// An operator's fault, to act out on this node (`cmctl fault`).
    InjectFault(Fault),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceDone {
    pub job: JobId,
    pub run: u32,
    pub epoch: u32,
    /// Every node's puts for this fence, in node order.
    pub kvs: Vec<(String, String)>,
    /// Set when the fence cannot complete: why, which ends the job.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetNodeStatus {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostJob {
    pub job: JobId,
    pub per_node: Resources,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartJob {
    /// The whole job: spec, id and the node list (for CM_NODELIST and ranks).
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreeResources {
    pub job: JobId,
    /// Kill this run of the job, or an earlier one.
    #[serde(default)]
    pub run: u32,
}

/// Responses to [`NodeRequest`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeResponse {
    NodeStatus(NodeStatusReply),
    CanHost(CanHost),
    Ack(Ack),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusReply {
    pub node: NodeId,
    pub capacity: Resources,
    /// Resources held by the jobs running here.
    pub allocated: Resources,
    pub running: Vec<JobRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanHost {
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<B: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: B) {
        let bytes = encode("t", &body).expect("encode");
        let (envelope, back): (Envelope, B) = decode(&bytes).expect("decode");
        assert_eq!(back, body);
        assert_eq!(envelope.version, PROTOCOL_VERSION);
        assert_eq!(envelope.sender, "t");
        assert_eq!(envelope.auth, Auth::None);
    }

    #[test]
    fn every_direction_round_trips() {
        round_trip(HeadRequest::Client(ClientRequest::KillJob(KillJob { id: JobId(3) })));
        round_trip(HeadRequest::Client(ClientRequest::FetchJobs(FetchJobs {
            include_finished: true,
            limit: Some(5),
            filter: JobFilter::default(),
        })));
        round_trip(HeadRequest::Compute(ComputeRequest::Heartbeat(Heartbeat {
            node: NodeId::new("c1"),
            running: vec![JobRun { job: JobId(1), run: 0 }, JobRun { job: JobId(2), run: 3 }],
        })));
        round_trip(NodeRequest::FreeResources(FreeResources { job: JobId(9), run: 1 }));
        let ok: Reply<ClientResponse> = Ok(ClientResponse::JobAccepted(JobAccepted { id: JobId(12), warning: None }));
        round_trip(ok);
        let err: Reply<NodeResponse> = Err(ErrorReply::new(ErrorCode::NotFound, "no such job"));
        round_trip(err);
    }

    #[test]
    fn an_error_reply_decodes_as_any_reply_type() {
        // A daemon that cannot decode a request does not know which reply type was expected.
        let err: Reply<ComputeResponse> = Err(ErrorReply::new(ErrorCode::BadRequest, "garbage"));
        let bytes = encode("head", &err).expect("encode");
        let (_, back): (Envelope, Reply<ClientResponse>) = decode(&bytes).expect("decode");
        assert_eq!(back.unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_foreign_version_is_reported_not_misread() {
        let envelope = Envelope { version: 99, sender: "future".to_string(), auth: Auth::None, body: vec![1] };
        let bytes = rmp_serde::to_vec_named(&envelope).expect("encode");
        match decode_envelope(&bytes) {
            Err(Error::VersionMismatch { ours, theirs }) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, 99))
            }
            other => panic!("expected a version mismatch, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for bytes in [&b""[..], b"\xff\xff\xff", b"hello world", &[0x81, 0xa7, b'v']] {
            assert!(matches!(decode::<HeadRequest>(bytes), Err(Error::Decode(_))), "{bytes:?}");
            assert!(matches!(decode_body::<HeadRequest>(bytes), Err(Error::Decode(_))), "{bytes:?}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_so_fields_can_be_added() {
        #[derive(Serialize)]
        struct NewerKill {
            id: JobId,
            reason: &'static str,
        }
        #[derive(Serialize)]
        enum NewerClient {
            KillJob(NewerKill),
        }
        #[derive(Serialize)]
        enum NewerHead {
            Client(NewerClient),
        }
        let bytes = encode("t", &NewerHead::Client(NewerClient::KillJob(NewerKill { id: JobId(4), reason: "x" })))
            .expect("encode");
        let (_, back): (Envelope, HeadRequest) = decode(&bytes).expect("decode");
        assert_eq!(back, HeadRequest::Client(ClientRequest::KillJob(KillJob { id: JobId(4) })));
    }
}
