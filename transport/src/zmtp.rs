//! The ZeroMQ wire protocol, ZMTP 3.0 (<https://rfc.zeromq.org/spec/23/>), as much of it as a REQ
//! and a REP peer need with the NULL mechanism: the greeting, the READY command that names a
//! socket's type, and the framing of messages and commands. No I/O here: [`crate::Requester`]
//! and [`crate::Responder`] read and write, and both build and check bytes with these functions.

/// Frame flags ("Framing").
pub const MORE: u8 = 0x01;
pub const LONG: u8 = 0x02;
pub const COMMAND: u8 = 0x04;

/// The greeting's length, and where its version and mechanism lie.
pub const GREETING: usize = 64;
const VERSION_MAJOR: usize = 10;
const MECHANISM: std::ops::Range<usize> = 12..32;

/// Our greeting: the signature, version 3.0, the NULL mechanism, not as server (NULL has none).
pub fn greeting() -> [u8; GREETING] {
    let mut greeting = [0u8; GREETING];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[VERSION_MAJOR] = 3;
    greeting[MECHANISM.start..MECHANISM.start + 4].copy_from_slice(b"NULL");
    greeting
}

/// Checks a peer's greeting: ZMTP 3 or later with the NULL mechanism.
pub fn check_greeting(greeting: &[u8]) -> Result<(), String> {
    if greeting.len() < GREETING || greeting[0] != 0xFF || greeting[9] & 1 == 0 {
        return Err("the peer does not speak ZeroMQ's protocol (ZMTP)".into());
    }
    if greeting[VERSION_MAJOR] < 3 {
        return Err(format!("the peer speaks ZMTP {}, not 3 (libzmq 4 or later)", greeting[VERSION_MAJOR]));
    }
    let mechanism = &greeting[MECHANISM];
    if !mechanism.starts_with(b"NULL") || mechanism[4..].iter().any(|&b| b != 0) {
        let name = String::from_utf8_lossy(mechanism);
        return Err(format!("the peer wants the {} security mechanism; cm speaks NULL", name.trim_end_matches('\0')));
    }
    Ok(())
}

/// Appends one frame: flags, then a short (1-byte) or long (8-byte) size, then the body.
pub fn push_frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    match u8::try_from(body.len()) {
        Ok(short) => out.extend_from_slice(&[flags, short]),
        Err(_) => {
            out.push(flags | LONG);
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
}

/// Appends a command frame: its name, then `data`.
pub fn push_command(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut body = Vec::with_capacity(1 + name.len() + data.len());
    body.push(name.len() as u8);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    push_frame(out, COMMAND, &body);
}

/// Appends the READY command frame of a `socket_type` socket (`REQ`, `REP`).
pub fn push_ready(out: &mut Vec<u8>, socket_type: &str) {
    let mut properties = vec![11];
    properties.extend_from_slice(b"Socket-Type");
    properties.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    properties.extend_from_slice(socket_type.as_bytes());
    push_command(out, "READY", &properties);
}

/// Appends an ERROR command frame with `reason` (cut to 255 bytes, as the spec allows).
pub fn push_error(out: &mut Vec<u8>, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(255)];
    let mut data = vec![reason.len() as u8];
    data.extend_from_slice(reason);
    push_command(out, "ERROR", &data);
}

/// A frame at the start of a buffer.
#[derive(Debug)]
pub struct Frame {
    pub flags: u8,
    /// Where the body lies in the buffer.
    pub body: std::ops::Range<usize>,
}

impl Frame {
    pub fn is_command(&self) -> bool {
        self.flags & COMMAND != 0
    }

    pub fn more(&self) -> bool {
        self.flags & MORE != 0
    }
}

/// The frame at the start of `buffer`, if all of it is there. A frame whose body would be over
/// `max` bytes is an error before its body arrives, so a peer cannot make us hold more than that.
pub fn parse_frame(buffer: &[u8], max: u64) -> Result<Option<Frame>, String> {
    let Some(&flags) = buffer.first() else { return Ok(None) };
    let (size, header) = if flags & LONG != 0 {
        let Some(bytes) = buffer.get(1..9) else { return Ok(None) };
        (u64::from_be_bytes(bytes.try_into().unwrap_or_default()), 9)
    } else {
        let Some(&size) = buffer.get(1) else { return Ok(None) };
        (u64::from(size), 2)
    };
    if size > max {
        return Err(format!("a frame of {size} bytes is over the limit of {max} bytes"));
    }
    let end = header + size as usize;
    Ok((buffer.len() >= end).then_some(Frame { flags, body: header..end }))
}

/// A command's name and the rest of its body.
pub fn command(body: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let length = usize::from(*body.first().ok_or("the peer sent an empty command")?);
    let name = body.get(1..1 + length).ok_or("the peer sent a cut-off command")?;
    Ok((name, &body[1 + length..]))
}

/// The socket type a peer's READY command names (`None` if it names none), or why the command is
/// not a READY: an ERROR's reason, another command, or a cut-off body.
pub fn ready_socket_type(body: &[u8]) -> Result<Option<&[u8]>, String> {
    let (name, mut properties) = command(body)?;
    if name == b"ERROR" {
        return Err(refusal(properties));
    }
    if name != b"READY" {
        return Err(format!("the peer opened with {:?} instead of READY", String::from_utf8_lossy(name)));
    }
    let cut = || "the peer's READY command is cut off".to_string();
    let mut socket_type = None;
    while let Some(&length) = properties.first() {
        let name_end = 1 + usize::from(length);
        let key = properties.get(1..name_end).ok_or_else(cut)?;
        let size = properties.get(name_end..name_end + 4).ok_or_else(cut)?;
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
        let value = properties.get(name_end + 4..name_end + 4 + size).ok_or_else(cut)?;
        if key.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        }
        properties = &properties[name_end + 4 + size..];
    }
    Ok(socket_type)
}

/// What an ERROR command reports (its body after the name: a length and a reason).
pub fn refusal(rest: &[u8]) -> String {
    let reason = rest.get(1..).map(String::from_utf8_lossy).unwrap_or_default();
    format!("the peer refused the connection: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_short_and_long_and_wait_for_their_whole_body() {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, MORE, b"");
        push_frame(&mut bytes, 0, &[9u8; 300]);
        let first = parse_frame(&bytes, 1000).expect("valid").expect("whole");
        assert!(first.more() && first.body.is_empty() && first.body.start == 2);
        let rest = &bytes[first.body.end..];
        let second = parse_frame(rest, 1000).expect("valid").expect("whole");
        assert!(!second.more() && second.body == (9..309));
        assert!(parse_frame(&rest[..308], 1000).expect("valid").is_none(), "cut body");
        assert!(parse_frame(&rest[..5], 1000).expect("valid").is_none(), "cut size");
        assert!(parse_frame(rest, 299).expect_err("over the limit").contains("300 bytes"));
    }

    #[test]
    fn ready_names_its_socket_type_and_other_commands_are_refused() {
        let mut bytes = Vec::new();
        push_ready(&mut bytes, "REQ");
        let frame = parse_frame(&bytes, 1000).expect("valid").expect("whole");
        assert!(frame.is_command());
        assert_eq!(ready_socket_type(&bytes[frame.body]).expect("ready"), Some(&b"REQ"[..]));
        let mut error = Vec::new();
        push_error(&mut error, "go away");
        let frame = parse_frame(&error, 1000).expect("valid").expect("whole");
        assert!(ready_socket_type(&error[frame.body]).expect_err("an error").contains("go away"));
        assert!(ready_socket_type(&[5, b'R', b'E']).expect_err("cut").contains("cut-off"));
        assert!(ready_socket_type(&[5, b'R', b'E', b'A', b'D', b'Y', 11, b'S']).expect_err("cut").contains("cut off"));
    }

    #[test]
    fn greetings_other_than_zmtp3_null_are_refused() {
        assert!(check_greeting(&greeting()).is_ok());
        assert!(check_greeting(&[b'x'; GREETING]).expect_err("not zmtp").contains("does not speak"));
        let mut old = greeting();
        old[VERSION_MAJOR] = 2;
        assert!(check_greeting(&old).expect_err("zmtp 2").contains("ZMTP 2"));
        let mut curve = greeting();
        curve[MECHANISM.start..MECHANISM.start + 5].copy_from_slice(b"CURVE");
        assert!(check_greeting(&curve).expect_err("curve").contains("CURVE"));
    }
}
