//! cm-cli: the user tools `cmrun`, `cminfo`, `cmkill` and `cmacct`, thin over one small library.
//!
//! - [`client`]: finds the head (`--head`, `CM_HEAD`, the config) and sends it requests.
//! - [`output`]: every table and the `--json` forms; column headers are stable.
//! - [`accounting`]: `cmacct`'s fields and filters.
//! - [`submit`]: turns `cmrun`'s arguments and the caller's process into a `JobSpec`.
//! - [`directives`]: `#CM` lines in batch scripts.
//! - [`wait`]: `cmrun --wait`, answered by the head when the job ends.
//! - [`follow`]: `cmrun --wait` showing the job's output as it is written.
//! - [`generate`]: man pages and shell completions from the tools' definitions.
//! - [`startup`]: how a tool process starts ([`tool_main!`]): lean, as it runs once per request.

pub mod accounting;
pub mod client;
pub mod directives;
pub mod follow;
pub mod generate;
pub mod output;
pub mod startup;
pub mod submit;
pub mod wait;
