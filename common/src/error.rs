//! Errors of the shared crate: configuration, encoding and transport failures.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the shared layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    ConfigRead { path: PathBuf, source: std::io::Error },
    /// The configuration file is not valid YAML for cm's settings.
    #[error("the configuration file {path} is invalid: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// A value in the configuration or on the command line makes no sense.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(String),
    /// Bytes from a peer were not a message cm understands.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this program speaks version {ours}, the peer sent version {theirs}; run the same cm release everywhere")]
    VersionMismatch { ours: u16, theirs: u16 },
    /// No reply came from the peer within the deadline, after every retry.
    #[error("no reply from {endpoint} after {attempts} attempt(s) of {timeout_ms} ms each; is the daemon running and reachable there?")]
    Unreachable { endpoint: String, attempts: u32, timeout_ms: u64 },
    /// The network layer itself failed (bad address, port in use, ...).
    #[error("network error on {endpoint}: {reason}")]
    Network { endpoint: String, reason: String },
    /// A message or its reply could not be authenticated, or no credential could be made.
    #[error("{0}")]
    Auth(String),
    /// A time limit string could not be parsed.
    #[error("invalid time limit {input:?}: {reason}; use minutes (90), MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")]
    TimeLimit { input: String, reason: String },
}
