//! The MongoDB store: the head's truth in a MongoDB database, as in the original design.
//!
//! Collections (all readable in `mongosh`):
//! - `jobs`: one document per job, `_id` = job id, every field of `Job` by name, enums as strings
//!   (`state.status: "Running"`), timestamps as BSON dates, plus `settled` (see
//!   `Job::is_settled`), indexed with `_id` so the head's start-up query is an index scan.
//! - `nodes`: one document per node, `_id` = node id.
//!
//! Only what MongoDB 6/7 standalone servers support is used: no transactions (they need a
//! replica set). `save` writes jobs before nodes; the head rebuilds node reservations from jobs
//! when it starts, so a crash between the two writes leaves nothing inconsistent. Writes use
//! `w: majority, j: true`, so an acknowledged write survives a crash of the database too.

use super::{Store, StoreError, StoreResult};
use cm_common::job::Job;
use cm_common::node::Node;
use cm_common::JobId;
use mongodb::bson::{self, doc, Bson, DateTime, Document};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::sync::{Client, Collection, Database};
use mongodb::IndexModel;
use std::time::Duration;

/// Field names that hold a `Timestamp`; stored as BSON dates so `mongosh` shows real dates.
const TIMESTAMP_FIELDS: [&str; 6] =
    ["submitted_at", "started_at", "ended_at", "since", "registered_at", "last_heartbeat"];

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "cm";

/// A [`Store`] in MongoDB.
pub struct MongoStore {
    db: Database,
    jobs: Collection<Document>,
    nodes: Collection<Document>,
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
        let store = MongoStore { jobs: db.collection("jobs"), nodes: db.collection("nodes"), db };
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
}

impl Store for MongoStore {
    fn last_job_id(&self) -> StoreResult<JobId> {
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
        u64::try_from(id).map(JobId).map_err(|_| corrupt(format!("a job's _id is negative ({id})")))
    }

    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        for job in jobs {
            let id = job_id(job.id)?;
            let mut doc = to_doc(job, id)?;
            doc.insert("settled", job.is_settled());
            self.jobs.replace_one(doc! { "_id": id }, doc).upsert(true).run().map_err(backend)?;
        }
        for node in nodes {
            let doc = to_doc(node, node.id.as_str())?;
            self.nodes.replace_one(doc! { "_id": node.id.as_str() }, doc).upsert(true).run().map_err(backend)?;
        }
        Ok(())
    }

    /// Every `save` is already acknowledged with a majority, journaled write concern: nothing is
    /// left to sync.
    fn sync(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let found = self.jobs.find_one(doc! { "_id": job_id(id)? }).run().map_err(backend)?;
        found.map(from_doc).transpose()
    }

    fn active_jobs(&self) -> StoreResult<Vec<Job>> {
        let cursor = self.jobs.find(doc! { "settled": false }).sort(doc! { "_id": 1 }).run().map_err(backend)?;
        cursor.map(|doc| from_doc(doc.map_err(backend)?)).collect()
    }

    fn finished_jobs(&self, limit: usize) -> StoreResult<Vec<Job>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let filter = doc! { "state.status": { "$nin": ["Pending", "Running"] } };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cursor = self.jobs.find(filter).sort(doc! { "_id": -1 }).limit(limit).run().map_err(backend)?;
        let mut jobs: Vec<Job> = cursor.map(|doc| from_doc(doc.map_err(backend)?)).collect::<StoreResult<_>>()?;
        jobs.reverse();
        Ok(jobs)
    }

    fn nodes(&self) -> StoreResult<Vec<Node>> {
        let cursor = self.nodes.find(doc! {}).sort(doc! { "_id": 1 }).run().map_err(backend)?;
        cursor.map(|doc| from_doc(doc.map_err(backend)?)).collect()
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
    fn mongo_store_keeps_the_contract() {
        let Some(uri) = mongo_server::database_uri("contract") else { return };
        contract_tests::run_all(|| MongoStore::connect(&uri, Duration::from_secs(10)).expect("connect"));
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
