//! A private PostgreSQL cluster that starts itself, so `mystira-users` works on a machine where
//! nothing is configured.
//!
//! # Where it lives
//! One directory holds everything (`$MYSTIRA_PG_DIR`, else `$XDG_DATA_HOME/mystira-users/postgres`
//! or `~/.local/share/mystira-users/postgres`; as root `/var/lib/mystira-users/postgres`, because
//! the server then runs as the unprivileged `postgres` account, which cannot enter `/root`):
//!
//! ```text
//! <dir>/data/        the data directory (PGDATA), created by initdb
//! <dir>/socket/      the server's Unix socket; the server listens on no TCP address at all
//! <dir>/server.log   the server's log
//! <dir>/.lock        held (flock) while a process initializes, starts or stops the cluster
//! ```
//!
//! # How it is reached
//! Only through the Unix socket in `<dir>/socket` (mode 0700): no other account can connect, no
//! TCP port is taken, and two clusters in two directories never collide. The port number, 5432,
//! only names the socket file (`.s.PGSQL.5432`), so it need not be free and is not remembered
//! anywhere. The server trusts every local connection as the `postgres` superuser; the
//! directory's permissions are the access control. The database url is
//! `postgres://postgres@localhost:5432/mystira_users?host=<dir>/socket`.
//!
//! # Settings
//! A new cluster gets `shared_buffers` sized from the machine's memory (a quarter, 128 MB to
//! 4 GB) written into its `postgresql.conf`, because PostgreSQL's default of 128 MB makes a
//! large load slow down as its indexes grow (see [`settings`]); `ALTER SYSTEM` overrides it.
//!
//! # Concurrency
//! Starting and stopping take an exclusive lock on `<dir>/.lock`, so two processes starting the
//! cluster at once do not both run initdb: the second waits, then finds it running. initdb
//! writes into `data.initdb/` and renames it to `data/` only when it succeeded, so an interrupted
//! initdb never leaves a half-made cluster behind. The kernel drops the lock when its holder
//! dies, so a crashed process never leaves a stale lock.

mod account;
mod binaries;
mod error;
mod settings;

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

pub use account::{ServerAccount, effective_uid};
pub use binaries::{BINDIR_ENV, MIN_MAJOR, ServerBinaries};
pub use error::LocalClusterError;

/// Environment variable that chooses the cluster's directory.
pub const DIR_ENV: &str = "MYSTIRA_PG_DIR";

/// The application database the cluster's url names.
pub const DATABASE: &str = "mystira_users";

/// The socket's port number (only its file name, see the module docs).
const PORT: u16 = 5432;

/// How long a started server gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for another process that is initializing, starting or stopping the cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Pause between two readiness or lock attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Linux's `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// A private cluster in one directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCluster {
    dir: PathBuf,
}

/// What [`LocalCluster::status`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStatus {
    /// No data directory yet.
    NotInitialized,
    /// Initialized, not accepting connections.
    Stopped,
    /// Accepting connections.
    Running,
}

/// What [`LocalCluster::ensure_running`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAction {
    /// It was already running.
    Reused,
    /// It existed and was started.
    Started,
    /// It was created with initdb and started.
    Initialized,
}

/// A running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningCluster {
    /// The url of the application database ([`DATABASE`]), which exists.
    pub url: String,
    pub action: StartAction,
}

/// What [`LocalCluster::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    NotInitialized,
    WasNotRunning,
    Stopped,
}

impl LocalCluster {
    /// The cluster in `dir_override`, else in `$MYSTIRA_PG_DIR`, else in the default directory
    /// (see the module docs). Touches nothing on disk.
    pub fn discover(dir_override: Option<PathBuf>) -> Result<Self, LocalClusterError> {
        let dir = match dir_override.or_else(|| env_path(DIR_ENV)) {
            Some(dir) => dir,
            None => default_dir(
                std::env::var_os("XDG_DATA_HOME"),
                std::env::var_os("HOME"),
                account::effective_uid() == Some(0),
            )?,
        };
        Self::at(&dir)
    }

    /// The cluster in `dir` (made absolute). Fails when the url could not name its socket.
    pub fn at(dir: &Path) -> Result<Self, LocalClusterError> {
        let dir = std::path::absolute(dir)
            .map_err(|e| LocalClusterError::io("resolve the directory", dir, e))?;
        if dir.to_str().is_none() {
            return Err(LocalClusterError::NonUtf8Path(dir));
        }
        let cluster = Self { dir };
        let socket = cluster.socket_dir().join(format!(".s.PGSQL.{PORT}"));
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(LocalClusterError::SocketPathTooLong {
                path: socket,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The url of the application database ([`DATABASE`]).
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The url of `database` on this cluster.
    pub fn url_for(&self, database: &str) -> String {
        let socket = self.socket_dir();
        let socket = socket.to_str().unwrap_or_default();
        format!(
            "postgres://postgres@localhost:{PORT}/{database}?host={}",
            percent_encode(socket)
        )
    }

    /// Whether the cluster exists and accepts connections. Changes nothing.
    pub async fn status(&self) -> ClusterStatus {
        if !self.is_initialized() {
            ClusterStatus::NotInitialized
        } else if self.accepts_connections().await {
            ClusterStatus::Running
        } else {
            ClusterStatus::Stopped
        }
    }

    /// Returns the url of a running cluster whose application database exists: reuses a
    /// running server, starts a stopped one, or creates one first.
    pub async fn ensure_running(&self) -> Result<RunningCluster, LocalClusterError> {
        // fast path: no lock, no binaries needed
        if self.accepts_connections().await {
            return self.running(StartAction::Reused).await;
        }
        let account = ServerAccount::for_this_process()?;
        account.check_can_reach(&self.dir)?;
        create_private_dir(&self.dir)?;
        let _lock = self.lock().await?;
        // another process may have started it while we waited for the lock
        if self.accepts_connections().await {
            return self.running(StartAction::Reused).await;
        }
        let binaries = ServerBinaries::find().await?;
        create_private_dir(&self.socket_dir())?;
        account.take_ownership(&self.dir)?;
        account.take_ownership(&self.socket_dir())?;

        let mut action = StartAction::Started;
        if !self.is_initialized() {
            self.initdb(&binaries, &account).await?;
            action = StartAction::Initialized;
        }
        if !self.pg_ctl_says_running(&binaries, &account).await? {
            self.pg_ctl_start(&binaries, &account).await?;
        }
        self.wait_ready().await?;
        self.running(action).await
    }

    /// Stops the server (fast shutdown: open sessions are ended, nothing committed is lost).
    pub async fn stop(&self) -> Result<StopOutcome, LocalClusterError> {
        if !self.is_initialized() {
            return Ok(StopOutcome::NotInitialized);
        }
        let _lock = self.lock().await?;
        let account = ServerAccount::for_this_process()?;
        let binaries = ServerBinaries::find().await?;
        if !self.pg_ctl_says_running(&binaries, &account).await? {
            return Ok(StopOutcome::WasNotRunning);
        }
        tracing::info!(dir = %self.dir.display(), "stopping private postgresql cluster");
        let data = self.data_dir();
        let args: [&std::ffi::OsStr; 9] = [
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-s".as_ref(),
            "stop".as_ref(),
        ];
        let output = self
            .run(&account, &binaries.pg_ctl(), "stop", &args)
            .await?;
        self.check_success(&binaries.pg_ctl(), "stop", &output)?;
        Ok(StopOutcome::Stopped)
    }

    fn is_initialized(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
    }

    async fn running(&self, action: StartAction) -> Result<RunningCluster, LocalClusterError> {
        let url = self.url();
        let created = crate::schema::ensure_database(&url)
            .await
            .map_err(|source| LocalClusterError::CreateDatabase {
                database: DATABASE,
                source,
            })?;
        if created {
            tracing::info!(database = DATABASE, "created database");
        }
        if action == StartAction::Reused {
            tracing::debug!(dir = %self.dir.display(), "reusing the running private postgresql cluster");
        } else {
            tracing::info!(dir = %self.dir.display(), ?action, "private postgresql cluster is running");
        }
        Ok(RunningCluster { url, action })
    }

    async fn accepts_connections(&self) -> bool {
        let Ok(options) = PgConnectOptions::from_str(&self.url_for("postgres")) else {
            return false;
        };
        let options = options.disable_statement_logging();
        match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
            Ok(Ok(conn)) => {
                // a failed goodbye does not make the server any less ready
                let _ = conn.close().await;
                true
            }
            _ => false,
        }
    }

    /// Waits for the exclusive lock on `<dir>/.lock`, at most [`LOCK_TIMEOUT`].
    async fn lock(&self) -> Result<File, LocalClusterError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LocalClusterError::io("open the lock file", &path, e))?;
        let started = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(LocalClusterError::io("lock", &path, e));
                }
            }
            if !announced {
                tracing::info!(lock = %path.display(), "waiting for another process to finish with the private postgresql cluster");
                announced = true;
            }
            if started.elapsed() >= LOCK_TIMEOUT {
                return Err(LocalClusterError::LockTimeout {
                    path,
                    waited_secs: LOCK_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Creates the data directory, into a temporary name first (see the module docs).
    async fn initdb(
        &self,
        binaries: &ServerBinaries,
        account: &ServerAccount,
    ) -> Result<(), LocalClusterError> {
        tracing::info!(dir = %self.dir.display(), major = binaries.major, "creating private postgresql cluster");
        let staging = self.dir.join("data.initdb");
        let mut last_failure = None;
        // C.UTF-8 sorts by code point and handles every character; a few systems lack it
        for locale in ["C.UTF-8", "C"] {
            remove_dir_if_present(&staging)?;
            let locale_arg = format!("--locale={locale}");
            let args: [&std::ffi::OsStr; 9] = [
                "-D".as_ref(),
                staging.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                locale_arg.as_ref(),
                "--no-instructions".as_ref(),
            ];
            let output = self
                .run(account, &binaries.initdb(), "initdb", &args)
                .await?;
            match self.check_success(&binaries.initdb(), "initdb", &output) {
                Ok(()) => {
                    settings::write(&staging)?;
                    let data = self.data_dir();
                    std::fs::rename(&staging, &data).map_err(|e| {
                        LocalClusterError::io("rename the new cluster to", &data, e)
                    })?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(locale, "initdb failed with this locale");
                    last_failure = Some(e);
                }
            }
        }
        remove_dir_if_present(&staging)?;
        Err(last_failure.unwrap_or(LocalClusterError::Command {
            program: binaries.initdb().display().to_string(),
            action: "initdb",
            status: String::new(),
            output: "no locale was tried".into(),
        }))
    }

    async fn pg_ctl_says_running(
        &self,
        binaries: &ServerBinaries,
        account: &ServerAccount,
    ) -> Result<bool, LocalClusterError> {
        let data = self.data_dir();
        let args: [&std::ffi::OsStr; 3] = ["-D".as_ref(), data.as_os_str(), "status".as_ref()];
        let output = self
            .run(account, &binaries.pg_ctl(), "status", &args)
            .await?;
        // 0: running; 3: not running; 4: no accessible data directory
        Ok(output.status.success())
    }

    async fn pg_ctl_start(
        &self,
        binaries: &ServerBinaries,
        account: &ServerAccount,
    ) -> Result<(), LocalClusterError> {
        tracing::info!(dir = %self.dir.display(), "starting private postgresql cluster");
        let socket = self.socket_dir();
        // pg_ctl hands these to the server through /bin/sh, hence the quoting
        let server_options = format!(
            "-c listen_addresses='' -k {} -p {PORT}",
            shell_quote(socket.to_str().unwrap_or_default())
        );
        let data = self.data_dir();
        let log = self.log_file();
        let timeout = READY_TIMEOUT.as_secs().to_string();
        let args: [&std::ffi::OsStr; 11] = [
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-o".as_ref(),
            server_options.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            timeout.as_ref(),
            "-s".as_ref(),
            "start".as_ref(),
        ];
        let output = self
            .run(account, &binaries.pg_ctl(), "start", &args)
            .await?;
        if let Err(LocalClusterError::Command {
            program,
            action,
            status,
            output,
        }) = self.check_success(&binaries.pg_ctl(), "start", &output)
        {
            return Err(LocalClusterError::Command {
                program,
                action,
                status,
                output: format!(
                    "{output}\nlast lines of {}:\n{}",
                    log.display(),
                    self.log_tail()
                ),
            });
        }
        Ok(())
    }

    /// Polls until the server accepts connections, at most [`READY_TIMEOUT`].
    async fn wait_ready(&self) -> Result<(), LocalClusterError> {
        let started = Instant::now();
        loop {
            if self.accepts_connections().await {
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(LocalClusterError::NotReady {
                    waited_secs: READY_TIMEOUT.as_secs(),
                    log: self.log_file(),
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Runs a server program as the server account, in the cluster directory (so that a
    /// working directory the account cannot enter, like `/root`, does not matter).
    async fn run(
        &self,
        account: &ServerAccount,
        program: &Path,
        action: &'static str,
        args: &[&std::ffi::OsStr],
    ) -> Result<std::process::Output, LocalClusterError> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            // the server's own environment must not redirect it elsewhere
            .env_remove("PGDATA");
        account.apply(&mut command);
        tracing::debug!(program = %program.display(), action, "running postgresql program");
        command
            .output()
            .await
            .map_err(|e| LocalClusterError::Command {
                program: program.display().to_string(),
                action,
                status: String::new(),
                output: e.to_string(),
            })
    }

    fn check_success(
        &self,
        program: &Path,
        action: &'static str,
        output: &std::process::Output,
    ) -> Result<(), LocalClusterError> {
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(LocalClusterError::Command {
            program: program.display().to_string(),
            action,
            status: output
                .status
                .code()
                .map(|c| format!(" (exit status {c})"))
                .unwrap_or_default(),
            output: tail(&text, LOG_TAIL_LINES),
        })
    }

    fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.log_file()) {
            Ok(text) => tail(&text, LOG_TAIL_LINES),
            Err(e) => format!("(cannot read the log: {e})"),
        }
    }
}

/// The default cluster directory (see the module docs). `is_root` picks the system location.
pub(crate) fn default_dir(
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
    is_root: bool,
) -> Result<PathBuf, LocalClusterError> {
    if is_root {
        return Ok(PathBuf::from("/var/lib/mystira-users/postgres"));
    }
    // the XDG spec says relative values are to be ignored
    let data_home = xdg_data_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .ok_or(LocalClusterError::NoDataDir)?;
    Ok(data_home.join("mystira-users/postgres"))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Creates `dir` (and parents) and makes it accessible to its owner only.
fn create_private_dir(dir: &Path) -> Result<(), LocalClusterError> {
    std::fs::create_dir_all(dir).map_err(|e| LocalClusterError::io("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| LocalClusterError::io("set the permissions of", dir, e))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), LocalClusterError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LocalClusterError::io("remove", dir, e))
        }
        _ => Ok(()),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Percent-encodes everything but unreserved characters and `/` (for a url query value).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Quotes `text` as one word for /bin/sh.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_the_system_directory_whatever_home_says() {
        let dir = default_dir(Some("/x".into()), Some("/root".into()), true).expect("dir");
        assert_eq!(dir, PathBuf::from("/var/lib/mystira-users/postgres"));
    }

    #[test]
    fn user_directory_follows_xdg_then_home() {
        let xdg = default_dir(Some("/data".into()), Some("/home/a".into()), false).expect("dir");
        assert_eq!(xdg, PathBuf::from("/data/mystira-users/postgres"));
        let relative_xdg_ignored =
            default_dir(Some("rel".into()), Some("/home/a".into()), false).expect("dir");
        assert_eq!(
            relative_xdg_ignored,
            PathBuf::from("/home/a/.local/share/mystira-users/postgres")
        );
        assert!(matches!(
            default_dir(None, None, false),
            Err(LocalClusterError::NoDataDir)
        ));
    }

    #[test]
    fn url_names_the_socket_directory_and_parses_back_to_it() {
        let cluster = LocalCluster::at(Path::new("/tmp/my pg&dir")).expect("cluster");
        let url = cluster.url();
        assert_eq!(
            url,
            "postgres://postgres@localhost:5432/mystira_users?host=/tmp/my%20pg%26dir/socket"
        );
        let options = PgConnectOptions::from_str(&url).expect("sqlx parses the url");
        assert_eq!(
            options.get_socket(),
            Some(&PathBuf::from("/tmp/my pg&dir/socket"))
        );
        assert_eq!(options.get_database(), Some("mystira_users"));
        assert_eq!(options.get_username(), "postgres");
    }

    #[test]
    fn a_socket_path_beyond_the_kernel_limit_is_refused_up_front() {
        let long = format!("/tmp/{}", "d".repeat(100));
        let err = LocalCluster::at(Path::new(&long)).expect_err("too long");
        assert!(
            matches!(err, LocalClusterError::SocketPathTooLong { max: 107, .. }),
            "{err}"
        );
        assert!(LocalCluster::at(Path::new("/tmp/short")).is_ok());
    }

    #[test]
    fn relative_directories_are_made_absolute() {
        let cluster = LocalCluster::at(Path::new("rel/pg")).expect("cluster");
        assert!(cluster.dir().is_absolute());
        assert!(cluster.dir().ends_with("rel/pg"));
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
