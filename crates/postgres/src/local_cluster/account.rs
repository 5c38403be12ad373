//! Which operating-system account runs the server.
//!
//! initdb, pg_ctl and postgres refuse to run as root. So when mystira-users runs as root it runs
//! them as the `postgres` account (or `nobody` when there is none), hands that account the
//! cluster directory, and checks up front that the account can reach the directory at all (it
//! cannot enter `/root`, which is why root's default cluster lives under `/var/lib`). As an
//! ordinary user it runs them directly.
//!
//! Everything is read from `/proc/self/status` and `/etc/passwd`, with no `unsafe` and no libc:
//! the target is Linux, where both always exist.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::LocalClusterError;

/// The account the server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAccount {
    /// This process's own account (not root): no switching, no chown.
    Current,
    /// An unprivileged account to switch to, because this process is root.
    Switch { name: String, uid: u32, gid: u32 },
}

impl ServerAccount {
    /// The account to use for this process: [`ServerAccount::Current`] unless running as root.
    pub fn for_this_process() -> Result<Self, LocalClusterError> {
        if effective_uid() != Some(0) {
            return Ok(Self::Current);
        }
        let passwd = std::fs::read_to_string("/etc/passwd")
            .map_err(|e| LocalClusterError::io("read", "/etc/passwd", e))?;
        ["postgres", "nobody"]
            .iter()
            .find_map(|name| lookup(&passwd, name))
            .ok_or(LocalClusterError::NoServerAccount)
    }

    /// Sets the uid and gid of a command that runs a server program.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        if let Self::Switch { uid, gid, .. } = self {
            // std drops root's supplementary groups when it switches uid, so the server keeps
            // none of root's privileges
            command.uid(*uid).gid(*gid);
        }
    }

    /// Hands `path` to the account (only when switching; an ordinary user already owns it).
    pub fn take_ownership(&self, path: &Path) -> Result<(), LocalClusterError> {
        if let Self::Switch { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| LocalClusterError::io("change the owner of", path, e))?;
        }
        Ok(())
    }

    /// Fails when the account cannot enter every ancestor of `dir` (the directory itself is
    /// handed to the account, so only its parents matter).
    pub fn check_can_reach(&self, dir: &Path) -> Result<(), LocalClusterError> {
        let Self::Switch { name, uid, gid } = self else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            if !can_search(meta.mode(), meta.uid(), meta.gid(), *uid, *gid) {
                return Err(LocalClusterError::NotTraversable {
                    account: name.clone(),
                    dir: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// The effective uid, from the `Uid:` line of `/proc/self/status` (real, effective, saved, fs).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The account `name` in passwd(5) text (`name:password:uid:gid:gecos:home:shell`).
fn lookup(passwd: &str, name: &str) -> Option<ServerAccount> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(ServerAccount::Switch {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

/// Whether an account may search (enter) a directory with these permission bits. Ignores
/// supplementary groups: a directory reachable only through one is reported unreachable, which
/// errs on the side of a clear message over a confusing initdb failure.
fn can_search(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if owner == uid {
        mode & 0o100 != 0
    } else if group == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";

    #[test]
    fn finds_accounts_by_exact_name() {
        assert_eq!(
            lookup(PASSWD, "postgres"),
            Some(ServerAccount::Switch {
                name: "postgres".into(),
                uid: 101,
                gid: 104
            })
        );
        assert_eq!(lookup(PASSWD, "postgre"), None);
        assert_eq!(lookup("broken:x:notanumber:1::/:/bin/sh", "broken"), None);
    }

    #[test]
    fn reads_the_effective_not_the_real_uid() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
    }

    #[test]
    fn root_home_is_not_searchable_by_others_but_tmp_is() {
        // /root is 0700 root:root; /tmp is 1777 root:root
        assert!(!can_search(0o040700, 0, 0, 101, 104));
        assert!(can_search(0o041777, 0, 0, 101, 104));
        // owner bits apply to the owner even when others may search
        assert!(!can_search(0o040011, 101, 0, 101, 104));
        assert!(can_search(0o040750, 0, 104, 101, 104));
    }

    #[test]
    fn an_ordinary_user_is_never_blocked_by_the_reachability_check() {
        assert!(
            ServerAccount::Current
                .check_can_reach(Path::new("/root/x/y"))
                .is_ok()
        );
    }
}
