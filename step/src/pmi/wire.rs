//! PMI-1's wire protocol, as MPICH's simple PMI client speaks it: one line per command,
//! `cmd=NAME key=value ...`, values without spaces, and one response line per command (none for
//! `barrier_in` until the barrier is over).
//!
//! Every line comes from the job, so it is parsed as hostile: bounded lengths, known commands
//! only, keys and values checked before they are stored or relayed.

use std::fmt;

/// The longest line a client sends or reads (MPICH's `PMIU_MAXLINE`).
pub const MAX_LINE: usize = 1024;
/// Key and value limits announced by `get_maxes`, as MPICH's own process manager announces them;
/// the client shortens values further to fit its line.
pub const KVSNAME_MAX: usize = 256;
pub const KEY_MAX: usize = 64;
pub const VALUE_MAX: usize = 1024;

/// A command from a rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Init {
        version: u32,
        subversion: u32,
    },
    GetMaxes,
    GetAppnum,
    GetMyKvsname,
    GetUniverseSize,
    Put {
        kvsname: String,
        key: String,
        value: String,
    },
    Get {
        kvsname: String,
        key: String,
    },
    BarrierIn,
    Finalize,
    Abort {
        exit_code: i32,
    },
    /// Name publishing and dynamic processes, which cm does not offer: answered with an error
    /// in the response the client expects (`publish_result`, `lookup_result`, ...).
    Unsupported {
        response: &'static str,
    },
}

/// A line that is not a command cm accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub String);

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `key=value` pairs of a line, in order.
fn pairs(line: &str) -> Result<Vec<(&str, &str)>, BadLine> {
    line.split(' ')
        .filter(|word| !word.is_empty())
        .map(|word| word.split_once('=').ok_or_else(|| BadLine(format!("`{}` is not key=value", shorten(word)))))
        .collect()
}

fn field<'a>(pairs: &[(&str, &'a str)], name: &str) -> Result<&'a str, BadLine> {
    pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).ok_or_else(|| BadLine(format!("no {name}=")))
}

fn checked(what: &str, text: &str, max: usize) -> Result<String, BadLine> {
    if text.len() > max {
        return Err(BadLine(format!("the {what} is over {max} bytes")));
    }
    // Printable ASCII only: values travel between nodes and into other ranks' lines.
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadLine(format!("the {what} holds a byte that is not printable ASCII")));
    }
    Ok(text.to_string())
}

fn number<T: std::str::FromStr>(pairs: &[(&str, &str)], name: &str) -> Result<T, BadLine> {
    field(pairs, name)?.parse().map_err(|_| BadLine(format!("{name}= is not a number")))
}

fn shorten(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// Parses one line, without its newline.
pub fn parse(line: &str) -> Result<Command, BadLine> {
    if line.len() > MAX_LINE {
        return Err(BadLine(format!("a line is over {MAX_LINE} bytes")));
    }
    let pairs = pairs(line)?;
    let Some(&(first, name)) = pairs.first() else { return Err(BadLine("an empty line".into())) };
    if first == "mcmd" {
        // Spawning is sent as several lines; the caller drops the rest up to `endcmd`.
        return Ok(Command::Unsupported { response: "spawn_result" });
    }
    if first != "cmd" {
        return Err(BadLine(format!("a line starts with `{}=` instead of `cmd=`", shorten(first))));
    }
    Ok(match name {
        "init" => {
            Command::Init { version: number(&pairs, "pmi_version")?, subversion: number(&pairs, "pmi_subversion")? }
        }
        "get_maxes" => Command::GetMaxes,
        "get_appnum" => Command::GetAppnum,
        "get_my_kvsname" => Command::GetMyKvsname,
        "get_universe_size" => Command::GetUniverseSize,
        "put" => Command::Put {
            kvsname: checked("kvs name", field(&pairs, "kvsname")?, KVSNAME_MAX)?,
            key: checked("key", field(&pairs, "key")?, KEY_MAX)?,
            // An empty value is legal: `value=` with nothing after it.
            value: checked("value", field(&pairs, "value")?, VALUE_MAX)?,
        },
        "get" => Command::Get {
            kvsname: checked("kvs name", field(&pairs, "kvsname")?, KVSNAME_MAX)?,
            key: checked("key", field(&pairs, "key")?, KEY_MAX)?,
        },
        "barrier_in" => Command::BarrierIn,
        "finalize" => Command::Finalize,
        "abort" => Command::Abort { exit_code: number(&pairs, "exitcode").unwrap_or(1) },
        "publish_name" => Command::Unsupported { response: "publish_result" },
        "unpublish_name" => Command::Unsupported { response: "unpublish_result" },
        "lookup_name" => Command::Unsupported { response: "lookup_result" },
        other => return Err(BadLine(format!("unknown command `{}`", shorten(other)))),
    })
}

/// The response lines, each ending in a newline.
pub mod reply {
    use super::*;

    pub fn init(version: u32, subversion: u32) -> String {
        if (version, subversion) == (1, 1) {
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n".into()
        } else {
            // The client reports the mismatch with both versions.
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1\n".into()
        }
    }

    pub fn maxes() -> String {
        format!("cmd=maxes kvsname_max={KVSNAME_MAX} keylen_max={KEY_MAX} vallen_max={VALUE_MAX}\n")
    }

    pub fn appnum() -> String {
        "cmd=appnum appnum=0\n".into()
    }

    pub fn kvsname(name: &str) -> String {
        format!("cmd=my_kvsname kvsname={name}\n")
    }

    pub fn universe_size(size: u64) -> String {
        format!("cmd=universe_size size={size}\n")
    }

    pub fn put(result: Result<(), &str>) -> String {
        match result {
            Ok(()) => "cmd=put_result rc=0 msg=success\n".into(),
            Err(why) => format!("cmd=put_result rc=-1 msg={}\n", words(why)),
        }
    }

    pub fn get(value: Option<&str>) -> String {
        match value {
            Some(value) => format!("cmd=get_result rc=0 msg=success value={value}\n"),
            None => "cmd=get_result rc=-1 msg=key_not_found\n".into(),
        }
    }

    pub fn barrier_out() -> String {
        "cmd=barrier_out\n".into()
    }

    pub fn finalize_ack() -> String {
        "cmd=finalize_ack\n".into()
    }

    pub fn unsupported(response: &str) -> String {
        format!("cmd={response} rc=-1 msg=not_supported_by_cm\n")
    }

    /// A message as one word (PMI values cannot hold spaces).
    fn words(text: &str) -> String {
        text.replace(' ', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpich_commands_parse() {
        let cases = [
            ("cmd=init pmi_version=1 pmi_subversion=1", Command::Init { version: 1, subversion: 1 }),
            ("cmd=get_maxes", Command::GetMaxes),
            ("cmd=get_appnum", Command::GetAppnum),
            ("cmd=get_my_kvsname", Command::GetMyKvsname),
            ("cmd=get_universe_size", Command::GetUniverseSize),
            (
                "cmd=put kvsname=kvs_7 key=-bcast-1-0 value=2F6465",
                Command::Put { kvsname: "kvs_7".into(), key: "-bcast-1-0".into(), value: "2F6465".into() },
            ),
            ("cmd=put kvsname=k key=a value=", Command::Put { kvsname: "k".into(), key: "a".into(), value: "".into() }),
            (
                "cmd=get kvsname=kvs_7 key=PMI_process_mapping",
                Command::Get { kvsname: "kvs_7".into(), key: "PMI_process_mapping".into() },
            ),
            ("cmd=barrier_in", Command::BarrierIn),
            ("cmd=finalize", Command::Finalize),
            ("cmd=abort exitcode=3", Command::Abort { exit_code: 3 }),
            ("cmd=lookup_name service=x", Command::Unsupported { response: "lookup_result" }),
            ("mcmd=spawn", Command::Unsupported { response: "spawn_result" }),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn hostile_lines_are_refused_with_a_reason() {
        let long_value = format!("cmd=put kvsname=k key=a value={}", "x".repeat(VALUE_MAX + 1));
        let long_key = format!("cmd=put kvsname=k key={} value=1", "k".repeat(KEY_MAX + 1));
        let cases = [
            ("", "an empty line"),
            ("hello", "`hello` is not key=value"),
            ("key=value", "a line starts with `key=` instead of `cmd=`"),
            ("cmd=rm_rf", "unknown command `rm_rf`"),
            ("cmd=put kvsname=k key=a", "no value="),
            ("cmd=init pmi_version=one pmi_subversion=1", "pmi_version= is not a number"),
            ("cmd=put kvsname=k key=a\u{7f} value=1", "the key holds a byte that is not printable ASCII"),
            (long_value.as_str(), "a line is over 1024 bytes"),
            (long_key.as_str(), "the key is over 64 bytes"),
        ];
        for (line, reason) in cases {
            assert_eq!(parse(line), Err(BadLine(reason.into())), "{line}");
        }
        assert_eq!(parse(&"x".repeat(MAX_LINE + 1)), Err(BadLine("a line is over 1024 bytes".into())));
    }

    #[test]
    fn replies_are_what_the_client_expects() {
        assert_eq!(reply::init(1, 1), "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n");
        assert!(reply::init(2, 0).contains("rc=-1"));
        assert_eq!(reply::get(Some("v")), "cmd=get_result rc=0 msg=success value=v\n");
        assert_eq!(reply::get(None), "cmd=get_result rc=-1 msg=key_not_found\n");
        assert_eq!(reply::put(Err("too much data")), "cmd=put_result rc=-1 msg=too_much_data\n");
    }
}
