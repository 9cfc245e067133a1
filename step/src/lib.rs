//! cm-step: the job supervisor, `cmstep`, and the step file it shares with the compute daemon.
//!
//! - [`record`]: the step file, `STATE_DIR/jobs/<job>.<run>.step` (instructions in, end out);
//! - [`supervisor`]: the supervisor's loop (signals, time limit, the end record);
//! - [`replicas`]: one job run's replicas on this node (exits, stopping);
//! - [`launch`]: starting one replica as the job's user.
//!
//! The crate links no network code: one `cmstep` starts per job, so it must start fast.

pub mod launch;
pub mod record;
pub mod replicas;
pub mod supervisor;
