//! The MongoDB store: the head's truth in a MongoDB database, as in the original design.
//!
//! Collections (all readable in `mongosh`):
//! - `jobs`: one document per job, `_id` = job id, every field of `Job` by name, enums as strings
//!   (`state.status: "Running"`), timestamps as BSON dates, plus `settled` (see
//!   `Job::is_settled`), indexed with `_id` so the head's start-up query is an index scan.
//! - `nodes`: one document per node, `_id` = node id.
//!
//! Only what MongoDB 6/7 standalone servers support is used: no transactions (they need a
//! replica set). `save` only keeps the documents (the latest version of each); `sync` writes
//! them with one `update` command per collection (a batch of upserts), so a loop turn that
//! changes many jobs costs two round trips and one journal flush, not one of each per document.
//! Reads see what is kept but not yet written. `save_now` writes at once, keeping nothing.
//! Jobs are written before nodes; the head rebuilds
//! node reservations from jobs when it starts, so a crash between the two writes leaves nothing
//! inconsistent. Writes use `w: majority, j: true`, so an acknowledged write survives a crash of
//! the database too; a failed write keeps its documents for the next `sync`.

use super::{Store, StoreError, StoreResult};
use cm_common::job::{Job, JobFilter};
use cm_common::node::Node;
use cm_common::{JobId, NodeId};
use mongodb::bson::{self, doc, Bson, DateTime, Document};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::sync::{Client, Collection, Database};
use mongodb::IndexModel;
use std::collections::BTreeMap;
use std::time::Duration;

/// Field names that hold a `Timestamp`; stored as BSON dates so `mongosh` shows real dates.
const TIMESTAMP_FIELDS: [&str; 6] =
    ["submitted_at", "started_at", "ended_at", "since", "registered_at", "last_heartbeat"];

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "cm";

/// Most upserts in one `update` command (the server takes up to 100,000).
const MAX_BATCH: usize = 1000;
/// Most document bytes in one `update` command: the command must fit in a 16 MiB BSON document.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// A [`Store`] in MongoDB.
pub struct MongoStore {
    db: Database,
    jobs: Collection<Document>,
    nodes: Collection<Document>,
    /// Saved, not yet written: the latest document of each job and node, by `_id`.
    unwritten_jobs: BTreeMap<i64, Document>,
    unwritten_nodes: BTreeMap<String, Document>,
}

/// Sorts driver errors into "try again later" (the server does not answer) and the rest, with a
/// message a person can read (the driver's own includes topology dumps and raw replies).
fn backend(e: mongodb::error::Error) -> StoreError {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => {
            let short = message.split(". Topology").next().unwrap_or(message);
            StoreError::Unreachable(format!("MongoDB: {short}"))
        }
        ErrorKind::Io(io) => StoreError::Unreachable(format!("MongoDB: {io}")),
        ErrorKind::ConnectionPoolCleared { message, .. } => StoreError::Unreachable(format!("MongoDB: {message}")),
        ErrorKind::Command(c) => {
            StoreError::Backend(format!("MongoDB refused the command: {} ({}): {}", c.code_name, c.code, c.message))
        }
        other => StoreError::Backend(format!("MongoDB: {other}")),
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Rewrites timestamps (integers of milliseconds) to BSON dates, recursively.
fn dates_to_bson(doc: &mut Document) {
    for (key, value) in doc.iter_mut() {
        match value {
            Bson::Int64(ms) if TIMESTAMP_FIELDS.contains(&key.as_str()) => {
                *value = Bson::DateTime(DateTime::from_millis(*ms))
            }
            Bson::Int32(ms) if TIMESTAMP_FIELDS.contains(&key.as_str()) => {
                *value = Bson::DateTime(DateTime::from_millis(i64::from(*ms)))
            }
            Bson::Document(inner) => dates_to_bson(inner),
            Bson::Array(items) => items.iter_mut().for_each(|item| {
                if let Bson::Document(inner) = item {
                    dates_to_bson(inner)
                }
            }),
            _ => {}
        }
    }
}

/// The reverse of [`dates_to_bson`].
fn dates_from_bson(doc: &mut Document) {
    for (_, value) in doc.iter_mut() {
        match value {
            Bson::DateTime(date) => *value = Bson::Int64(date.timestamp_millis()),
            Bson::Document(inner) => dates_from_bson(inner),
            Bson::Array(items) => items.iter_mut().for_each(|item| {
                if let Bson::Document(inner) = item {
                    dates_from_bson(inner)
                }
            }),
            _ => {}
        }
    }
}

fn to_doc<T: serde::Serialize>(value: &T, id: impl Into<Bson>) -> StoreResult<Document> {
    let mut doc = bson::to_document(value).map_err(corrupt)?;
    dates_to_bson(&mut doc);
    doc.insert("_id", id.into());
    Ok(doc)
}

fn from_doc<T: serde::de::DeserializeOwned>(mut doc: Document) -> StoreResult<T> {
    doc.remove("_id");
    doc.remove("settled");
    dates_from_bson(&mut doc);
    bson::from_document(doc).map_err(corrupt)
}

/// Upsert statements by `_id`, split into batches of at most `max` statements and `max_bytes` of
/// documents (a larger document goes alone).
fn batches(docs: impl Iterator<Item = (Bson, Document)>, max: usize, max_bytes: usize) -> StoreResult<Vec<Vec<Bson>>> {
    let mut batches = vec![];
    let mut batch = vec![];
    let mut bytes = 0;
    for (id, doc) in docs {
        let size = bson::to_vec(&doc).map_err(corrupt)?.len();
        if !batch.is_empty() && (batch.len() == max || bytes + size > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(Bson::Document(doc! { "q": { "_id": id }, "u": doc, "upsert": true }));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Ok(batches)
}

/// A job's document and `_id`, with `settled` for the start-up query.
fn job_doc(job: &Job) -> StoreResult<(i64, Document)> {
    let id = job_id(job.id)?;
    let mut doc = to_doc(job, id)?;
    doc.insert("settled", job.is_settled());
    Ok((id, doc))
}

fn node_doc(node: &Node) -> StoreResult<Document> {
    to_doc(node, node.id.as_str())
}

fn job_id(id: JobId) -> StoreResult<i64> {
    i64::try_from(id.0).map_err(|_| corrupt(format!("job id {id} is too large for MongoDB")))
}

impl MongoStore {
    /// Connects to `uri` (`mongodb://HOST:PORT/DBNAME`, any MongoDB connection string) and
    /// prepares the collections and indexes. `timeout` bounds how long one operation waits for
    /// an unreachable server, so a request fails clearly instead of hanging.
    pub fn connect(uri: &str, timeout: Duration) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri)
            .run()
            .map_err(|e| StoreError::Backend(format!("invalid MongoDB URI {uri:?}: {e}")))?;
        options.app_name = Some("cm-head".to_string());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.write_concern = Some(WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build());
        let client = Client::with_options(options).map_err(backend)?;
        let db = client.default_database().unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        db.run_command(doc! { "ping": 1 }).run().map_err(backend)?;
        let store = MongoStore {
            jobs: db.collection("jobs"),
            nodes: db.collection("nodes"),
            db,
            unwritten_jobs: BTreeMap::new(),
            unwritten_nodes: BTreeMap::new(),
        };
        store.create_indexes()?;
        Ok(store)
    }

    fn create_indexes(&self) -> StoreResult<()> {
        let indexes = [doc! { "settled": 1, "_id": 1 }, doc! { "state.status": 1, "_id": -1 }];
        for keys in indexes {
            self.jobs.create_index(IndexModel::builder().keys(keys).build()).run().map_err(backend)?;
        }
        Ok(())
    }

    /// The database's name, for logs.
    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// Upserts `docs` into `collection` by `_id`, in as few `update` commands as the limits allow.
    fn write(&self, collection: &str, docs: impl Iterator<Item = (Bson, Document)>) -> StoreResult<()> {
        for batch in batches(docs, MAX_BATCH, MAX_BATCH_BYTES)? {
            self.update(collection, batch)?;
        }
        Ok(())
    }

    /// One `update` command; its write errors, which come back in a reply that says `ok`, too.
    fn update(&self, collection: &str, updates: Vec<Bson>) -> StoreResult<()> {
        let statements = updates.len();
        let command = doc! {
            "update": collection,
            "updates": updates,
            "ordered": true,
            "writeConcern": { "w": "majority", "j": true },
        };
        let reply = self.db.run_command(command).run().map_err(backend)?;
        let refused = |what: &str, error: &Document| {
            StoreError::Backend(format!(
                "MongoDB refused {what} to {collection}: {} ({})",
                error.get_str("errmsg").unwrap_or("no reason given"),
                error.get("code").map(ToString::to_string).unwrap_or_default()
            ))
        };
        if let Ok(errors) = reply.get_array("writeErrors") {
            if let Some(Bson::Document(first)) = errors.first() {
                return Err(refused("a write", first));
            }
        }
        if let Ok(error) = reply.get_document("writeConcernError") {
            return Err(refused("to confirm a write", error));
        }
        let written = reply.get("n").and_then(|n| n.as_i64().or_else(|| n.as_i32().map(i64::from)));
        if written != i64::try_from(statements).ok() {
            return Err(StoreError::Backend(format!(
                "MongoDB wrote {written:?} of {statements} documents to {collection}"
            )));
        }
        Ok(())
    }

    /// The kept, unwritten jobs, decoded.
    fn kept_jobs(&self) -> StoreResult<Vec<Job>> {
        self.unwritten_jobs.values().map(|doc| from_doc(doc.clone())).collect()
    }
}

/// The query for terminal jobs that `filter` matches (the same test as [`JobFilter::matches`]).
fn finished_filter(filter: &JobFilter) -> Document {
    let mut status = doc! { "$nin": ["Pending", "Running"] };
    if !filter.states.is_empty() {
        status.insert("$in", filter.states.clone());
    }
    let mut query = doc! { "state.status": status };
    if !filter.users.is_empty() {
        let uids: Vec<i64> = filter.users.iter().map(|&uid| i64::from(uid)).collect();
        query.insert("spec.user.uid", doc! { "$in": uids });
    }
    if !filter.jobs.is_empty() {
        let ids: Vec<i64> = filter.jobs.iter().map(|id| i64::try_from(id.0).unwrap_or(i64::MAX)).collect();
        query.insert("_id", doc! { "$in": ids });
    }
    let date = |t: cm_common::Timestamp| DateTime::from_millis(i64::try_from(t.0).unwrap_or(i64::MAX));
    if let Some(since) = filter.since {
        query.insert("state.ended_at", doc! { "$gte": date(since) });
    }
    if let Some(until) = filter.until {
        query.insert("submitted_at", doc! { "$lt": date(until) });
    }
    if !filter.nodes.is_empty() {
        let nodes: Vec<&str> = filter.nodes.iter().map(NodeId::as_str).collect();
        query.insert("nodes.node", doc! { "$in": nodes });
    }
    if !filter.arrays.is_empty() {
        let ids: Vec<i64> = filter.arrays.iter().map(|id| i64::try_from(id.0).unwrap_or(i64::MAX)).collect();
        query.insert("array.array", doc! { "$in": ids });
    }
    query
}

impl Store for MongoStore {
    fn last_job_id(&self) -> StoreResult<JobId> {
        let unwritten = self.unwritten_jobs.keys().next_back().copied().unwrap_or(0);
        let last = self
            .jobs
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .run()
            .map_err(backend)?;
        let id = match last.as_ref().and_then(|d| d.get("_id")) {
            None => 0,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(other) => return Err(corrupt(format!("a job's _id is {other:?}, not a number"))),
        };
        let stored = u64::try_from(id).map_err(|_| corrupt(format!("a job's _id is negative ({id})")))?;
        Ok(JobId(stored.max(u64::try_from(unwritten).unwrap_or(0))))
    }

    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        for job in jobs {
            let (id, doc) = job_doc(job)?;
            self.unwritten_jobs.insert(id, doc);
        }
        for node in nodes {
            self.unwritten_nodes.insert(node.id.to_string(), node_doc(node)?);
        }
        Ok(())
    }

    fn sync(&mut self) -> StoreResult<()> {
        if !self.unwritten_jobs.is_empty() {
            self.write("jobs", self.unwritten_jobs.iter().map(|(&id, doc)| (Bson::Int64(id), doc.clone())))?;
            self.unwritten_jobs.clear();
        }
        if !self.unwritten_nodes.is_empty() {
            self.write("nodes", self.unwritten_nodes.iter().map(|(id, doc)| (Bson::String(id.clone()), doc.clone())))?;
            self.unwritten_nodes.clear();
        }
        Ok(())
    }

    fn save_now(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        self.sync()?;
        let jobs = jobs.iter().map(|job| job_doc(job).map(|(id, doc)| (Bson::Int64(id), doc)));
        self.write("jobs", jobs.collect::<StoreResult<Vec<_>>>()?.into_iter())?;
        let nodes = nodes.iter().map(|node| node_doc(node).map(|doc| (Bson::String(node.id.to_string()), doc)));
        self.write("nodes", nodes.collect::<StoreResult<Vec<_>>>()?.into_iter())
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let id = job_id(id)?;
        if let Some(doc) = self.unwritten_jobs.get(&id) {
            return from_doc(doc.clone()).map(Some);
        }
        let found = self.jobs.find_one(doc! { "_id": id }).run().map_err(backend)?;
        found.map(from_doc).transpose()
    }

    fn active_jobs(&self) -> StoreResult<Vec<Job>> {
        let cursor = self.jobs.find(doc! { "settled": false }).sort(doc! { "_id": 1 }).run().map_err(backend)?;
        let mut jobs: BTreeMap<JobId, Job> =
            cursor.map(|doc| from_doc::<Job>(doc.map_err(backend)?).map(|j| (j.id, j))).collect::<StoreResult<_>>()?;
        for job in self.kept_jobs()? {
            if job.is_settled() {
                jobs.remove(&job.id);
            } else {
                jobs.insert(job.id, job);
            }
        }
        Ok(jobs.into_values().collect())
    }

    fn finished_jobs(&self, filter: &JobFilter, limit: usize) -> StoreResult<Vec<Job>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let cursor = self
            .jobs
            .find(finished_filter(filter))
            .sort(doc! { "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .run()
            .map_err(backend)?;
        let mut jobs: BTreeMap<JobId, Job> =
            cursor.map(|doc| from_doc::<Job>(doc.map_err(backend)?).map(|j| (j.id, j))).collect::<StoreResult<_>>()?;
        for job in self.kept_jobs()? {
            if job.state.is_terminal() && filter.matches(&job) {
                jobs.insert(job.id, job);
            } else {
                jobs.remove(&job.id);
            }
        }
        let skip = jobs.len().saturating_sub(limit);
        Ok(jobs.into_values().skip(skip).collect())
    }

    fn nodes(&self) -> StoreResult<Vec<Node>> {
        let cursor = self.nodes.find(doc! {}).sort(doc! { "_id": 1 }).run().map_err(backend)?;
        let mut nodes: BTreeMap<String, Node> = cursor
            .map(|doc| from_doc::<Node>(doc.map_err(backend)?).map(|n| (n.id.to_string(), n)))
            .collect::<StoreResult<_>>()?;
        for (id, doc) in &self.unwritten_nodes {
            nodes.insert(id.clone(), from_doc(doc.clone())?);
        }
        Ok(nodes.into_values().collect())
    }

    fn remove_node(&mut self, id: &NodeId) -> StoreResult<()> {
        // What came before is made durable first, so that no later sync writes the node back.
        self.sync()?;
        self.nodes.delete_one(doc! { "_id": id.as_str() }).run().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract_tests;
    use cm_testkit::mongo_server;

    #[test]
    fn documents_use_dates_and_strings_and_round_trip() {
        let mut job = contract_tests::job(JobId(7));
        job.state = cm_common::job::JobState::Running { started_at: cm_common::Timestamp(1_700_000_000_123) };
        let doc = to_doc(&job, 7_i64).expect("doc");
        assert_eq!(doc.get("_id"), Some(&Bson::Int64(7)));
        let state = doc.get_document("state").expect("state");
        assert_eq!(state.get_str("status"), Ok("Running"));
        assert_eq!(state.get_datetime("started_at").map(|d| d.timestamp_millis()), Ok(1_700_000_000_123));
        assert!(matches!(doc.get("submitted_at"), Some(Bson::DateTime(_))));
        let back: Job = from_doc(doc).expect("back");
        assert_eq!(back, job);
    }

    #[test]
    fn writes_are_split_by_count_and_by_bytes() {
        let docs = |sizes: &[usize]| {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (Bson::Int64(i as i64), doc! { "x": "y".repeat(n) }))
                .collect::<Vec<_>>()
        };
        let shape = |batches: Vec<Vec<Bson>>| batches.iter().map(Vec::len).collect::<Vec<_>>();
        // Each document of a 10-byte string is 10 + 16 bytes of BSON.
        assert_eq!(shape(batches(docs(&[10; 5]).into_iter(), 2, 1000).expect("batches")), [2, 2, 1]);
        assert_eq!(shape(batches(docs(&[10, 10, 10]).into_iter(), 100, 60).expect("batches")), [2, 1]);
        assert_eq!(shape(batches(docs(&[500, 10, 10]).into_iter(), 100, 60).expect("batches")), [1, 2], "alone");
        assert!(batches(docs(&[]).into_iter(), 100, 60).expect("batches").is_empty());
        let first = &batches(docs(&[1]).into_iter(), 1, 60).expect("batches")[0][0];
        assert_eq!(first, &Bson::Document(doc! { "q": { "_id": 0_i64 }, "u": { "x": "y" }, "upsert": true }));
    }

    #[test]
    fn mongo_store_keeps_the_contract() {
        let Some(uri) = mongo_server::database_uri("contract") else { return };
        contract_tests::run_all(|| MongoStore::connect(&uri, Duration::from_secs(10)).expect("connect"));
    }

    #[test]
    fn a_refused_write_fails_the_sync_and_is_written_by_a_later_one() {
        let Some(uri) = mongo_server::database_uri("refused") else { return };
        let open = || MongoStore::connect(&uri, Duration::from_secs(10)).expect("connect");
        let mut store = open();
        // An index the head never makes, so that the server refuses a second node at one address.
        let unique = mongodb::options::IndexOptions::builder().unique(true).name("one_per_address".to_string()).build();
        let index = IndexModel::builder().keys(doc! { "address": 1 }).options(unique).build();
        store.nodes.create_index(index).run().expect("index");
        let a = contract_tests::node("a");
        let mut b = contract_tests::node("b");
        b.address = a.address.clone();
        store.save(&[], &[&a, &b]).expect("save");
        let err = store.sync().expect_err("a duplicate address");
        assert!(err.to_string().contains("MongoDB refused a write to nodes"), "{err}");
        assert_eq!(store.nodes().expect("nodes"), vec![a.clone(), b.clone()], "reads still see both");
        store.nodes.drop_index("one_per_address").run().expect("drop index");
        store.sync().expect("the kept documents are written now");
        drop(store);
        assert_eq!(open().nodes().expect("nodes"), vec![a, b]);
    }

    #[test]
    fn an_unreachable_server_is_a_clear_error_within_the_timeout() {
        let started = std::time::Instant::now();
        let err = MongoStore::connect("mongodb://127.0.0.1:9/cm", Duration::from_millis(300)).err().expect("must fail");
        assert!(matches!(err, StoreError::Unreachable(_)), "{err}");
        assert!(!err.to_string().contains("Topology"), "short message: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        let err = MongoStore::connect("postgres://nope", Duration::from_millis(300)).err().expect("must fail");
        assert!(err.to_string().contains("invalid MongoDB URI"), "{err}");
    }
}
