//! The embedded store: a redb database file in the head's state directory.
//!
//! redb is a crash-safe (copy-on-write, checksummed) single-file key-value store. `save` commits
//! without a disk sync (redb's `Durability::None`); `sync` commits an empty transaction durably,
//! which makes every commit before it durable too, so a loop turn of the head costs one sync;
//! `save_now` commits its records durably, in one transaction. Records are MessagePack with named
//! fields, like the wire. Tables: `jobs` (id -> job), `active_jobs` (ids of jobs not yet
//! settled), `nodes` (id -> node). (A `meta` table left by earlier releases, which kept a job id
//! counter, is unused.)

use super::{Store, StoreError, StoreResult};
use cm_common::job::Job;
use cm_common::node::Node;
use cm_common::JobId;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use std::path::Path;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const ACTIVE_JOBS: TableDefinition<u64, ()> = TableDefinition::new("active_jobs");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

/// A [`Store`] in one redb file.
pub struct EmbeddedStore {
    db: Database,
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
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("cannot open the embedded store {}: {e}", path.display())))?;
        // Create every table once, so readers never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(JOBS).map_err(backend)?;
            txn.open_table(ACTIVE_JOBS).map_err(backend)?;
            txn.open_table(NODES).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore { db })
    }

    /// One transaction; a durable one makes every commit before it durable too.
    fn commit(&mut self, jobs: &[&Job], nodes: &[&Node], durability: Durability) -> StoreResult<()> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(durability);
        {
            let mut table = txn.open_table(JOBS).map_err(backend)?;
            let mut active = txn.open_table(ACTIVE_JOBS).map_err(backend)?;
            for job in jobs {
                table.insert(job.id.0, encode(job)?.as_slice()).map_err(backend)?;
                if job.is_settled() {
                    active.remove(job.id.0).map_err(backend)?;
                } else {
                    active.insert(job.id.0, ()).map_err(backend)?;
                }
            }
            let mut table = txn.open_table(NODES).map_err(backend)?;
            for node in nodes {
                table.insert(node.id.as_str(), encode(node)?.as_slice()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }
}

impl Store for EmbeddedStore {
    fn last_job_id(&self) -> StoreResult<JobId> {
        let txn = self.db.begin_read().map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let last = jobs.last().map_err(backend)?.map_or(0, |(id, _)| id.value());
        Ok(JobId(last))
    }

    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        self.commit(jobs, nodes, Durability::None)
    }

    fn sync(&mut self) -> StoreResult<()> {
        self.commit(&[], &[], Durability::Immediate)
    }

    fn save_now(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()> {
        self.commit(jobs, nodes, Durability::Immediate)
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(JOBS).map_err(backend)?;
        let found = table.get(id.0).map_err(backend)?;
        found.map(|bytes| decode(bytes.value())).transpose()
    }

    fn active_jobs(&self) -> StoreResult<Vec<Job>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let active = txn.open_table(ACTIVE_JOBS).map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in active.iter().map_err(backend)? {
            let (id, _) = entry.map_err(backend)?;
            if let Some(bytes) = jobs.get(id.value()).map_err(backend)? {
                out.push(decode(bytes.value())?);
            }
        }
        Ok(out)
    }

    fn finished_jobs(&self, limit: usize) -> StoreResult<Vec<Job>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let jobs = txn.open_table(JOBS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in jobs.iter().map_err(backend)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = entry.map_err(backend)?;
            let job: Job = decode(bytes.value())?;
            if job.state.is_terminal() {
                out.push(job);
            }
        }
        out.reverse();
        Ok(out)
    }

    fn nodes(&self) -> StoreResult<Vec<Node>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(NODES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (_, bytes) = entry.map_err(backend)?;
            out.push(decode(bytes.value())?);
        }
        Ok(out)
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
