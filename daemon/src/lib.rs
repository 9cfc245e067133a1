//! cm-daemon: the `cmd` binary's roles and machinery.
//!
//! A map of the crate:
//! - [`settings`]: command line + `config.yaml` -> one settings struct per role.
//! - [`head`]: the head role: its event loop (`head::run`), its state machine (`head::core`) and
//!   how it sends to nodes (`head::comm`).
//! - [`scheduler`]: the scheduling policy, a pure function.
//! - [`store`]: persistence behind the `Store` trait; `store::embedded` is the redb store.
//! - [`compute`]: the compute role: its event loop, running jobs, replica launch, head link.
//! - [`service`]: the REP socket thread both roles serve requests from.
//! - [`node_resources`]: CPU and memory detection.
//! - [`private`]: state directories 0700 and files 0600.

pub mod compute;
pub mod head;
pub mod node_resources;
pub mod private;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod store;
#[cfg(test)]
pub mod testing;
