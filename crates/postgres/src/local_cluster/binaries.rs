//! Finding the PostgreSQL server programs (initdb, pg_ctl, postgres).
//!
//! Search order: `$MYSTIRA_PG_BINDIR` alone when it is set (for installs in unusual places, and
//! for tests); otherwise every directory of `$PATH`, then `/usr/lib/postgresql/<major>/bin`
//! from the highest major down (Debian and Ubuntu keep the server programs there, off `$PATH`).
//! A directory counts only when it holds all three programs and `initdb --version` reports
//! major version 14 or newer.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::error::LocalClusterError;

/// Environment variable naming the one directory to take the server programs from.
pub const BINDIR_ENV: &str = "MYSTIRA_PG_BINDIR";

/// The oldest PostgreSQL major version the schema is written for.
pub const MIN_MAJOR: u32 = 14;

/// Where Debian-style packages install each major version's programs.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A directory holding initdb, pg_ctl and postgres of one PostgreSQL version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinaries {
    pub dir: PathBuf,
    pub major: u32,
}

impl ServerBinaries {
    pub fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    pub fn pg_ctl(&self) -> PathBuf {
        self.dir.join("pg_ctl")
    }

    /// Finds the server programs as described in the module docs.
    pub async fn find() -> Result<Self, LocalClusterError> {
        let candidates = candidate_dirs(
            std::env::var_os(BINDIR_ENV),
            std::env::var_os("PATH"),
            Path::new(VERSIONED_ROOT),
        );
        let searched = if std::env::var_os(BINDIR_ENV).is_some_and(|v| !v.is_empty()) {
            format!("searched {BINDIR_ENV} only")
        } else {
            format!("searched PATH and {VERSIONED_ROOT}/*/bin")
        };
        for dir in candidates {
            if !PROGRAMS.iter().all(|p| is_executable(&dir.join(p))) {
                continue;
            }
            match major_version(&dir.join("initdb")).await {
                Some(major) if major >= MIN_MAJOR => {
                    tracing::debug!(dir = %dir.display(), major, "found postgresql server binaries");
                    return Ok(Self { dir, major });
                }
                Some(major) => {
                    tracing::warn!(dir = %dir.display(), major, "skipping postgresql older than {MIN_MAJOR}");
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "skipping initdb whose version cannot be read");
                }
            }
        }
        Err(LocalClusterError::BinariesNotFound { searched })
    }
}

/// Directories to look in, in order (see the module docs). Pure apart from listing
/// `versioned_root`, so the order is testable.
pub(crate) fn candidate_dirs(
    bindir: Option<OsString>,
    path: Option<OsString>,
    versioned_root: &Path,
) -> Vec<PathBuf> {
    if let Some(dir) = bindir.filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let mut dirs: Vec<PathBuf> = path
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir(versioned_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            (major >= MIN_MAJOR).then(|| (major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The major version `initdb --version` reports (`initdb (PostgreSQL) 15.18 (Debian ...)`).
async fn major_version(initdb: &Path) -> Option<u32> {
    let output = tokio::process::Command::new(initdb)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    parse_major(&String::from_utf8_lossy(&output.stdout))
}

pub(crate) fn parse_major(version_line: &str) -> Option<u32> {
    let after = version_line.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_version_of_release_and_beta_lines() {
        assert_eq!(
            parse_major("initdb (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("pg_ctl (PostgreSQL) 17beta2"), Some(17));
        assert_eq!(parse_major("something else 15.1"), None);
    }

    #[test]
    fn bindir_override_is_the_only_candidate() {
        let dirs = candidate_dirs(
            Some("/opt/pg/bin".into()),
            Some("/usr/bin:/bin".into()),
            Path::new("/usr/lib/postgresql"),
        );
        assert_eq!(dirs, vec![PathBuf::from("/opt/pg/bin")]);
    }

    #[test]
    fn path_comes_first_then_versioned_dirs_highest_first_skipping_old_ones() {
        let root = std::env::temp_dir().join(format!("mystira-pg-versions-{}", std::process::id()));
        for v in ["13", "14", "16", "15", "not-a-version"] {
            std::fs::create_dir_all(root.join(v)).expect("create version dir");
        }
        let dirs = candidate_dirs(None, Some("/a:/b".into()), &root);
        std::fs::remove_dir_all(&root).expect("remove temp dir");
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                root.join("16/bin"),
                root.join("15/bin"),
                root.join("14/bin"),
            ]
        );
    }
}
