//! State that holds secrets (job environments, the store) is kept from other users: directories
//! 0700 and files 0600, whatever the umask, and directories made by an earlier release are
//! tightened when a daemon starts.

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes `dir` (and its parents, as usual) and leaves it 0700.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// Opens `path` for appending, made 0600 if new and tightened to 0600 if not.
pub fn append(path: &Path) -> std::io::Result<std::fs::File> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Leaves an existing file 0600.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
}
