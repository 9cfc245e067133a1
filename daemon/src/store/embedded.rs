//! The embedded store: a redb database file in the head's state directory.
//!
//! redb is a crash-safe (copy-on-write, checksummed) single-file key-value store. `save` only
//! encodes its records and keeps them; `sync` writes everything kept in one durable transaction
//! (none if nothing was saved), so a loop turn of the head costs one transaction and one disk
//! sync, however many changes it made, as with the MongoDB store; `save_now` writes what was kept
//! and its own records in one durable transaction. Reads see what is kept. Records are
//! MessagePack with named fields, like the wire. Tables: `jobs` (id -> job), `active_jobs` (ids
//! of jobs not yet settled), `nodes` (id -> node). (A `meta` table left by earlier releases,
//! which kept a job id counter, is unused.)
//!
//! Saves are kept in memory until the next sync: a transaction per save would cost about a
//! twentieth of the head's CPU per job in redb's commit path, for nothing the sync does not do.

use super::{Store, StoreError, StoreResult};
use cm_common::job::{Job, JobFilter};
use cm_common::node::Node;
use cm_common::{JobId, NodeId};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const ACTIVE_JOBS: TableDefinition<u64, ()> = TableDefinition::new("active_jobs");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

/// What redb may cache of the file in memory. Its default, 1 GiB, let the head's memory grow
/// with the database for as long as the head ran (over 100 MB after 25,000 jobs); the head
/// reads little of it back (the active jobs at start, single jobs, listings of finished ones).
const CACHE_BYTES: usize = 16 << 20;

/// A [`Store`] in one redb file.
pub struct EmbeddedStore {
    db: Database,
    /// Saved since the last write, by id, encoded: the next `sync` or `save_now` writes them.
    unwritten_jobs: BTreeMap<u64, EncodedJob>,
    unwritten_nodes: BTreeMap<String, Vec<u8>>,
}

/// A job as the tables take it, with what they and the reads need to know of it.
struct EncodedJob {
    bytes: Vec<u8>,
    settled: bool,
    terminal: bool,
}

impl EncodedJob {
    fn of(job: &Job) -> StoreResult<EncodedJob> {
        Ok(EncodedJob { bytes: encode(job)?, settled: job.is_settled(), terminal: job.state.is_terminal() })
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Backend(format!("cannot open the embedded store {}: {e}", path.display())))?;
        // Create every table once, so readers never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(JOBS).map_err(backend)?;
            txn.open_table(ACTIVE_JOBS).map_err(backend)?;
            txn.open_table(NODES).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore { db, unwritten_jobs: BTreeMap::new(), unwritten_nodes: BTreeMap::new() })
    }

    /// Writes what was kept, then `jobs` and `nodes`, in one durable transaction, and forgets
    /// what was kept once it is written (on an error it stays for the next try).
    fn write(&mut self, jobs: &[(u64, EncodedJob)], nodes: &[(&str, Vec<u8>)]) -> StoreResult<()> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(JOBS).map_err(backend)?;
            let mut active = txn.open_table(ACTIVE_JOBS).map_err(backend)?;
            let kept = self.unwritten_jobs.iter().map(|(&id, job)| (id, job));
            for (id, job) in kept.chain(jobs.iter().map(|(id, job)| (*id, job))) {
                table.insert(id, job.bytes.as_slice()).map_err(backend)?;
                if job.settled {
                    active.remove(id).map_err(backend)?;
                } else {
                    active.insert(id, ()).map_err(backend)?;
                }
            }
            let mut table = txn.open_table(NODES).map_err(backend)?;
            let kept = self.unwritten_nodes.iter().map(|(id, bytes)| (id.as_str(), bytes));
            for (id, bytes) in kept.chain(nodes.iter().map(|(id, bytes)| (*id, bytes))) {
                table.insert(id, bytes.as_slice()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        self.unwritten_jobs.clear();
        self.unwritten_nodes.clear();
        Ok(())
    }
}

impl Store for EmbeddedStore {
    fn last_job_id(&self) -> StoreResult<JobId> {
        let txn = self.db.begin_read().map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let written = jobs.last().map_err(backend)?.map_or(0, |(id, _)| id.value());
        let kept = self.unwritten_jobs.keys().next_back().copied().unwrap_or(0);
        Ok(JobId(written.max(kept)))
    }

    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        for job in jobs {
            self.unwritten_jobs.insert(job.id.0, EncodedJob::of(job)?);
        }
        for node in nodes {
            self.unwritten_nodes.insert(node.id.to_string(), encode(node)?);
        }
        Ok(())
    }

    fn sync(&mut self) -> StoreResult<()> {
        if self.unwritten_jobs.is_empty() && self.unwritten_nodes.is_empty() {
            return Ok(()); // every write so far was durable
        }
        self.write(&[], &[])
    }

    fn save_now(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        let jobs: Vec<(u64, EncodedJob)> =
            jobs.iter().map(|job| Ok((job.id.0, EncodedJob::of(job)?))).collect::<StoreResult<_>>()?;
        let nodes: Vec<(&str, Vec<u8>)> =
            nodes.iter().map(|node| Ok((node.id.as_str(), encode(node)?))).collect::<StoreResult<_>>()?;
        self.write(&jobs, &nodes)
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        if let Some(job) = self.unwritten_jobs.get(&id.0) {
            return decode(&job.bytes).map(Some);
        }
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(JOBS).map_err(backend)?;
        let found = table.get(id.0).map_err(backend)?;
        found.map(|bytes| decode(bytes.value())).transpose()
    }

    fn active_jobs(&self) -> StoreResult<Vec<Job>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let active = txn.open_table(ACTIVE_JOBS).map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let mut out = BTreeMap::new();
        for entry in active.iter().map_err(backend)? {
            let (id, _) = entry.map_err(backend)?;
            if let Some(bytes) = jobs.get(id.value()).map_err(backend)? {
                out.insert(id.value(), decode(bytes.value())?);
            }
        }
        for (&id, job) in &self.unwritten_jobs {
            if job.settled {
                out.remove(&id);
            } else {
                out.insert(id, decode(&job.bytes)?);
            }
        }
        Ok(out.into_values().collect())
    }

    fn finished_jobs(&self, filter: &JobFilter, limit: usize) -> StoreResult<Vec<Job>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let mut out = BTreeMap::new();
        for entry in jobs.iter().map_err(backend)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (id, bytes) = entry.map_err(backend)?;
            let job: Job = decode(bytes.value())?;
            if job.state.is_terminal() && filter.matches(&job) {
                out.insert(id.value(), job);
            }
        }
        for (&id, job) in &self.unwritten_jobs {
            let decoded = if job.terminal { Some(decode(&job.bytes)?) } else { None };
            match decoded.filter(|j: &Job| filter.matches(j)) {
                Some(job) => out.insert(id, job),
                None => out.remove(&id),
            };
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.into_values().skip(skip).collect())
    }

    fn nodes(&self) -> StoreResult<Vec<Node>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(NODES).map_err(backend)?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(backend)? {
            let (id, bytes) = entry.map_err(backend)?;
            out.insert(id.value().to_string(), decode(bytes.value())?);
        }
        for (id, bytes) in &self.unwritten_nodes {
            out.insert(id.clone(), decode(bytes)?);
        }
        Ok(out.into_values().collect())
    }

    fn remove_node(&mut self, id: &NodeId) -> StoreResult<()> {
        // What came before is made durable first, so that no later sync writes the node back.
        self.sync()?;
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate);
        txn.open_table(NODES).map_err(backend)?.remove(id.as_str()).map_err(backend)?;
        txn.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_store_keeps_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cm.redb");
        super::super::contract_tests::run_all(|| EmbeddedStore::open(&path).expect("open"));
    }

    #[test]
    fn an_unopenable_path_is_a_clear_error() {
        let err = EmbeddedStore::open(Path::new("/nonexistent/dir/cm.redb")).err().expect("must fail").to_string();
        assert!(err.contains("/nonexistent/dir/cm.redb"), "{err}");
    }
}
