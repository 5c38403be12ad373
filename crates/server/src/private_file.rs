//! Files only this process's user may touch: the development signing key (whoever can read it
//! mints any token development mode accepts) and the development mail file (it holds sign-up
//! codes). They are opened without following a symbolic link (`O_NOFOLLOW`: a link planted in
//! their place is refused, not followed to where it points), and, once open, checked on the
//! open file itself (no window between the check and the use): owned by the process's
//! effective user, with no access for the group or others. A file that is not so is refused
//! with what to do, never repaired: someone else may be reading it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// How a private file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read an existing file.
    Read,
    /// Append, creating the file (mode 0600) when it does not exist.
    Append,
}

/// Opens `path` as [`Access`] says, without following a link, and checks that the open file
/// is a regular file private to this user. The error says why and what to do.
pub(crate) fn open(path: &Path, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Append => options.append(true).create(true).mode(0o600),
    };
    options.custom_flags(libc::O_NOFOLLOW);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            refused(format!(
                "{} is a symbolic link, which is not followed: put the file itself there",
                path.display()
            ))
        } else {
            e
        }
    })?;
    check(&file, path)?;
    Ok(file)
}

/// The checks of an open file: a regular file, owned by this process's effective user, with
/// no permission for the group or others.
fn check(file: &File, path: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(format!("{} is not a regular file", path.display())));
    }
    if let Some(uid) = effective_uid()
        && meta.uid() != uid
    {
        return Err(refused(format!(
            "{} is owned by uid {}, not by this process's user (uid {uid}): use a file of \
             your own",
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refused(format!(
            "{} is open to other users (mode {mode:03o}): `chmod 600` it if nobody else could \
             have read it, else remove it (a new one is made)",
            path.display()
        )));
    }
    Ok(())
}

fn refused(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, reason)
}

/// This process's effective user id, from /proc/self/status (Linux; `None` elsewhere, and the
/// owner is then not checked). Read rather than asked with `geteuid`, which is unsafe to call
/// and this workspace forbids unsafe code.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    // `Uid:` real, effective, saved, filesystem
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
