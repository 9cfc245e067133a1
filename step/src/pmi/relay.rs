//! What a supervisor and its compute daemon say to each other about a fence, on the daemon's
//! Unix socket `STATE_DIR/pmi.sock`: one connection per fence, one [`FenceIn`] frame in, one
//! [`FenceOut`] frame back once every node of the job has reached the same fence (the head
//! gathers them). Frames are a 4-byte big-endian length and MessagePack.
//!
//! The socket lives in the daemon's private state directory, and the daemon takes connections
//! only from its own uid (the kernel's peer credentials): the job's user cannot reach it.

use cm_common::job::JobRun;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// The file name of the daemon's socket in its state directory.
pub const SOCKET: &str = "pmi.sock";

/// The largest frame either side accepts: a job's whole key-value space fits (see
/// [`crate::pmi::MAX_KVS_BYTES`]) with room for the encoding.
pub const MAX_FRAME: usize = crate::pmi::MAX_KVS_BYTES + (1 << 20);

/// A node's ranks have all reached fence `epoch`, having put `puts` since the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceIn {
    pub run: JobRun,
    pub epoch: u32,
    pub puts: Vec<(String, String)>,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceOut {
    /// Every node has reached the fence: what all of them put, in node order.
    Done { epoch: u32, kvs: Vec<(String, String)> },
    /// The fence cannot complete; the reason ends the job.
    Refused { reason: String },
}

/// The bytes of one frame.
pub fn frame<T: Serialize>(message: &T) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(message).unwrap_or_default();
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// A whole frame at the start of `buffer`: the message and how many bytes it took; `Ok(None)`
/// while more bytes are needed.
pub fn unframe<T: for<'de> Deserialize<'de>>(buffer: &[u8]) -> Result<Option<(T, usize)>, String> {
    let Some(header) = buffer.get(..4) else { return Ok(None) };
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if length > MAX_FRAME {
        return Err(format!("a frame of {length} bytes is over the limit of {MAX_FRAME}"));
    }
    let Some(body) = buffer.get(4..4 + length) else { return Ok(None) };
    let message = rmp_serde::from_slice(body).map_err(|e| format!("a frame cannot be read: {e}"))?;
    Ok(Some((message, 4 + length)))
}

/// Reads one frame from a blocking stream (the daemon's side).
pub fn read_frame<T: for<'de> Deserialize<'de>>(stream: &mut impl Read) -> Result<T, String> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).map_err(|e| format!("cannot read a frame: {e}"))?;
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(format!("a frame of {length} bytes is over the limit of {MAX_FRAME}"));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(|e| format!("cannot read a frame: {e}"))?;
    rmp_serde::from_slice(&body).map_err(|e| format!("a frame cannot be read: {e}"))
}

/// Writes one frame to a blocking stream (the daemon's side).
pub fn write_frame<T: Serialize>(stream: &mut impl Write, message: &T) -> std::io::Result<()> {
    stream.write_all(&frame(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::JobId;

    #[test]
    fn frames_round_trip_whole_or_in_pieces() {
        let message = FenceIn { run: JobRun { job: JobId(7), run: 1 }, epoch: 2, puts: vec![("k".into(), "v".into())] };
        let bytes = frame(&message);
        for cut in 0..bytes.len() {
            assert_eq!(unframe::<FenceIn>(&bytes[..cut]), Ok(None));
        }
        assert_eq!(unframe::<FenceIn>(&bytes), Ok(Some((message.clone(), bytes.len()))));
        assert_eq!(read_frame::<FenceIn>(&mut &bytes[..]), Ok(message));
    }

    #[test]
    fn oversized_and_garbled_frames_are_refused() {
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(unframe::<FenceIn>(&huge).unwrap_err().contains("over the limit"));
        let garbage = [0, 0, 0, 2, 0xc1, 0xc1];
        assert!(unframe::<FenceIn>(&garbage).unwrap_err().contains("cannot be read"));
    }
}
