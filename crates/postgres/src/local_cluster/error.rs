//! What can go wrong while finding, creating, starting or stopping the private cluster. Every
//! message says what to do about it; none contains a password or row data (the cluster has no
//! password, and only paths, programs and the server's own log appear).

use std::path::PathBuf;

/// An error of the private PostgreSQL cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    /// No usable initdb/pg_ctl/postgres was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found ({searched}): install \
         PostgreSQL 14 or newer (Debian/Ubuntu: apt-get install postgresql), set MYSTIRA_PG_BINDIR \
         to the directory holding them, or configure a database url (--database-url) to use an \
         existing server"
    )]
    BinariesNotFound { searched: String },

    /// Neither `$XDG_DATA_HOME` nor `$HOME` is set, so there is no default place for the data.
    #[error(
        "cannot choose a directory for the private PostgreSQL cluster: neither XDG_DATA_HOME nor \
         HOME is set; set MYSTIRA_PG_DIR"
    )]
    NoDataDir,

    /// A path the cluster needs is not valid UTF-8 (the database url must be text).
    #[error(
        "the private PostgreSQL cluster directory {0:?} is not valid UTF-8; set MYSTIRA_PG_DIR"
    )]
    NonUtf8Path(PathBuf),

    /// The Unix socket's path would exceed the kernel's limit for socket addresses.
    #[error(
        "the socket path {path:?} is {len} bytes, longer than the {max} bytes a Unix socket \
         allows; set MYSTIRA_PG_DIR to a shorter directory"
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    /// Running as root, and no unprivileged account exists to run the server as.
    #[error(
        "running as root, but neither a `postgres` nor a `nobody` account exists in /etc/passwd \
         to run the PostgreSQL server as (initdb and postgres refuse to run as root)"
    )]
    NoServerAccount,

    /// Running as root, the server account cannot enter a parent of the cluster directory.
    #[error(
        "the account `{account}` that runs the PostgreSQL server cannot enter {dir:?}: choose a \
         MYSTIRA_PG_DIR outside it (for example under /var/lib or /tmp)"
    )]
    NotTraversable { account: String, dir: PathBuf },

    /// A file-system operation failed.
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A PostgreSQL program could not be run, or exited with an error.
    #[error("{program} {action} failed{status}: {output}")]
    Command {
        program: String,
        action: &'static str,
        /// ` (exit status N)` or empty when the program could not be started.
        status: String,
        /// The tail of what it printed (or why it could not start).
        output: String,
    },

    /// The server was started but did not accept connections in time.
    #[error(
        "the private PostgreSQL server did not accept connections within {waited_secs} s; \
         last lines of {log:?}:\n{log_tail}"
    )]
    NotReady {
        waited_secs: u64,
        log: PathBuf,
        log_tail: String,
    },

    /// Another process held the cluster's lock for too long.
    #[error(
        "another mystira-users process has held the lock {path:?} for {waited_secs} s while \
         starting or stopping the private PostgreSQL cluster; try again when it is done"
    )]
    LockTimeout { path: PathBuf, waited_secs: u64 },

    /// Creating the application database failed.
    #[error("cannot create the database `{database}` in the private PostgreSQL cluster: {source}")]
    CreateDatabase {
        database: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl LocalClusterError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
