//! Batch scripts: `cmrun job.sh`, where job.sh carries cmrun's options on `#CM` lines at its top
//! (`#CM -n 2`, `#CM --array 1-10`), as `#SBATCH` lines do for sbatch. They are read from the
//! top of the file up to its first command (blank lines and other comments are passed over), and
//! go before the command line's own options, which therefore override them.

use std::io::Read;
use std::path::Path;

/// The most of a script read for its directives.
const MAX_HEADER: u64 = 64 * 1024;

/// A script named as a job's command: its directives, and how to run it.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    /// The options its `#CM` lines give, word by word.
    pub options: Vec<String>,
    /// The words that run it, before its arguments: `./job.sh` where it is executable, else
    /// its `#!` interpreter's words and `./job.sh`, else `sh ./job.sh`.
    pub program: Vec<String>,
}

/// `word` as a batch script, if it names a file in the current directory (no `/` in it, as
/// sbatch takes `job.sh`) or a path to one; `None` for anything else, which runs as a command.
pub fn script(word: &str) -> Result<Option<Script>, String> {
    let path = Path::new(word);
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    let mut header = String::new();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {word}: {e}"))?;
    // A script that is not text has no directives, and runs as it is.
    if file.take(MAX_HEADER).read_to_string(&mut header).is_err() {
        header.clear();
    }
    let options = parse(&header).map_err(|e| format!("{word}: {e}"))?;
    let local = if word.contains('/') { word.to_string() } else { format!("./{word}") };
    use std::os::unix::fs::PermissionsExt;
    let mut program: Vec<String> = Vec::new();
    if meta.permissions().mode() & 0o111 == 0 {
        match header.lines().next().and_then(|l| l.strip_prefix("#!")) {
            Some(interpreter) if !interpreter.trim().is_empty() => {
                program.extend(interpreter.split_whitespace().map(String::from))
            }
            _ => program.push("sh".into()),
        }
    }
    program.push(local);
    Ok(Some(Script { options, program }))
}

/// The options on the `#CM` lines at the top of `text`.
pub fn parse(text: &str) -> Result<Vec<String>, String> {
    let mut options = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("#CM") {
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                continue; // `#CMD` or the like: a comment
            }
            let words = shell_words::split(rest).map_err(|e| format!("line {}: {e}", number + 1))?;
            options.extend(words);
        } else if !line.is_empty() && !line.starts_with('#') {
            break; // the first command ends the directives
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_up_to_the_first_command() {
        let text =
            "#!/bin/bash\n#CM -n 2\n\n# a comment\n#CM --array 1-10 -a 'my sweep'\n#CMD not one\necho hi\n#CM -p 9\n";
        assert_eq!(parse(text).unwrap(), ["-n", "2", "--array", "1-10", "-a", "my sweep"]);
        assert!(parse("#CM -a 'unclosed\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn a_script_runs_itself_or_through_its_interpreter() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.py");
        std::fs::write(&job, "#!/usr/bin/python3\n#CM -n 3\nprint(1)\n").unwrap();
        let path = job.to_str().unwrap();
        let found = script(path).unwrap().unwrap();
        assert_eq!(found.options, ["-n", "3"]);
        assert_eq!(found.program, ["/usr/bin/python3", path]);
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(script(path).unwrap().unwrap().program, [path]);
        assert_eq!(script("/nonexistent/job.sh").unwrap(), None);
        assert_eq!(script(dir.path().to_str().unwrap()).unwrap(), None, "a directory is no script");
    }
}
