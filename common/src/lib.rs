//! cm-common: the vocabulary every cm program shares. It has no network code (that is
//! `cm-transport`), so the per-job supervisor `cmstep` links neither ZeroMQ nor C++.
//!
//! A map of the crate:
//! - [`ids`]: `JobId` and `NodeId` newtypes.
//! - [`time`]: wall-clock timestamps as they travel and are stored.
//! - [`resources`]: CPUs and memory, as capacities and reservations.
//! - [`array`]: job arrays' task sets (`0-99:10%8`).
//! - [`dependency`]: `afterok:12`, `singleton` and the rest.
//! - [`job`]: what a user submits (`JobSpec`) and what the head tracks (`Job`, `JobState`).
//! - [`node`]: what the head knows of each node (`Node`, `NodeHealth`).
//! - [`partition`]: named groups of nodes with limits of their own.
//! - [`timelimit`]: SLURM-style time-limit strings (`90`, `1:30:00`, `2-12`).
//! - [`protocol`]: the wire messages, one request/response pair per direction, in a versioned envelope.
//! - [`config`]: `config.yaml` and its defaults.
//! - [`error`]: the errors this crate returns.

pub mod array;
pub mod config;
pub mod dependency;
pub mod error;
pub mod ids;
pub mod job;
pub mod node;
pub mod partition;
pub mod protocol;
pub mod resources;
pub mod time;
pub mod timelimit;

pub use error::{Error, Result};
pub use ids::{JobId, NodeId};
pub use resources::Resources;
pub use time::Timestamp;
