//! cm-step: the job supervisor, `cmstep`, and the step file it shares with the compute daemon.
//!
//! - [`record`]: the step file, `STATE_DIR/jobs/<job>.<run>.step` (instructions in, end out);
//! - [`launcher`]: the fork server that starts supervisors for the compute daemon;
//! - [`supervisor`]: the supervisor's loop (signals, time limit, the end record);
//! - [`replicas`]: one job run's replicas on this node (exits, stopping);
//! - [`launch`]: starting one replica as the job's user;
//! - [`cgroup`]: the run's cgroup (its CPUs, memory and processes, its kill, its accounting).
//! - [`pmi`]: the PMI-1 server MPI programs find each other through.
//!
//! The crate links no network code: `cmstep` must start fast, and every supervisor is a copy of
//! it, so it must also stay small.

pub mod cgroup;
pub mod launch;
pub mod launcher;
pub mod pmi;
pub mod record;
pub mod replicas;
pub mod supervisor;
