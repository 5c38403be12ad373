//! Settings: which config file is read, what it may contain, and which database the commands
//! use.
//!
//! Precedence for the database: `--database-url` > `$DATABASE_URL` > `database_url` in the
//! config file > the private PostgreSQL cluster that starts itself. The config file is
//! `--config FILE` (or `$MYSTIRA_CONFIG`), which must exist; otherwise `./mystira-users.toml`
//! when it exists; otherwise `$XDG_CONFIG_HOME/mystira-users/config.toml` (`~/.config/...`) when
//! it exists; otherwise none.
//!
//! The file is TOML. Unknown keys are an error naming the key, so a typo never silently falls
//! back to a default. Later sections (`[cosmos]`, ...) are added as fields of [`ConfigFile`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The name looked for in the working directory.
pub const LOCAL_CONFIG_NAME: &str = "mystira-users.toml";

/// The contents of a config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// PostgreSQL url, used when neither `--database-url` nor `$DATABASE_URL` is given.
    pub database_url: Option<String>,
    /// `[cosmos]`: the source account, used when the flags and environment do not say.
    pub cosmos: Option<CosmosSection>,
    /// `[migrate]`: batching and pacing of the backfill, used when the flags do not say.
    pub migrate: Option<MigrateSection>,
    /// `[phase]`: the phase gates, used when the flags and environment do not say.
    pub phase: Option<PhaseSection>,
    /// `[serve]`: the service's address, token verification and proxies, used when the flags
    /// and environment do not say.
    pub serve: Option<ServeSection>,
}

/// `[serve]` in the config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    pub listen: Option<std::net::SocketAddr>,
    /// The identity provider's `jwks_uri` (production).
    pub jwks_url: Option<String>,
    /// A JWKS document on disk (production), instead of `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Address blocks whose `X-Forwarded-For` names the client (`["10.0.0.0/8"]`).
    pub trusted_proxies: Option<Vec<String>>,
    /// Clock leeway, in seconds, for the tokens' `exp` and `nbf` (0 to 300).
    pub jwt_leeway_seconds: Option<u64>,
}

/// `[phase]` in the config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSection {
    /// A clean verify older than this (`24h`, `90m`, ...) does not open the gates into phases
    /// 2 and 3.
    pub max_verify_age: Option<String>,
}

/// `[cosmos]` in the config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosmosSection {
    pub endpoint: Option<String>,
    /// The account key. Prefer `$COSMOS_KEY`; a key in a file must be readable only by you.
    pub key: Option<String>,
    pub database: Option<String>,
    /// PEM file of the certificate to trust (a local emulator or test server).
    pub ca_file: Option<PathBuf>,
}

/// `[migrate]` in the config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateSection {
    pub batch_rows: Option<usize>,
    pub workers: Option<usize>,
    pub ranges_per_container: Option<usize>,
    pub max_rps: Option<u32>,
    pub lease_seconds: Option<u64>,
    /// `auto`, `initial` or `upsert` (see `migrate --help`).
    pub load_mode: Option<mystira_migrate::LoadMode>,
}

/// A mistake in the configuration (exit code 2). Messages name the file, line and key, never a
/// value (a url may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path:?} does not exist (given by --config or MYSTIRA_CONFIG)")]
    NotFound { path: PathBuf },
    #[error("cannot read config file {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path:?}{location}: {message}")]
    Invalid {
        path: PathBuf,
        /// ` line N` when known.
        location: String,
        message: String,
    },
    /// Flags that do not fit together or name something that is not there.
    #[error("{0}")]
    Usage(String),
}

/// Where a database url came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// `--database-url`
    Flag,
    /// `$DATABASE_URL`
    Env,
    /// `database_url` in the config file
    ConfigFile,
}

/// The database the commands use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A configured url.
    Url { url: String, source: UrlSource },
    /// Nothing configured: the private cluster that starts itself.
    PrivateCluster,
}

impl DatabaseTarget {
    /// Where the url comes from, as shown in output: `flag`, `env`, `config_file` or
    /// `private_cluster`.
    pub fn source_label(&self) -> &'static str {
        match self {
            Self::Url {
                source: UrlSource::Flag,
                ..
            } => "flag",
            Self::Url {
                source: UrlSource::Env,
                ..
            } => "env",
            Self::Url {
                source: UrlSource::ConfigFile,
                ..
            } => "config_file",
            Self::PrivateCluster => "private_cluster",
        }
    }
}

/// The process environment the config file search depends on (a struct so tests can vary it).
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    pub cwd: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl SearchEnv {
    pub fn from_process() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            cwd: std::env::current_dir().ok(),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
        }
    }

    fn user_config_file(&self) -> Option<PathBuf> {
        // the XDG spec says relative values are to be ignored
        let dir = self
            .xdg_config_home
            .clone()
            .filter(|p| p.is_absolute())
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")))?;
        Some(dir.join("mystira-users/config.toml"))
    }
}

/// Everything the commands need to know from flags, environment and config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub database: DatabaseTarget,
    /// The config file's contents (empty when there is none), for the commands' own sections.
    pub file: ConfigFile,
}

impl Settings {
    /// Resolves the settings. `cli_url` is `--database-url` or `$DATABASE_URL` (clap reads both
    /// and says which); `explicit_config` is `--config` or `$MYSTIRA_CONFIG`.
    pub fn resolve(
        cli_url: Option<(String, UrlSource)>,
        explicit_config: Option<&Path>,
        env: &SearchEnv,
    ) -> Result<Self, ConfigError> {
        let config_file = find_config_file(explicit_config, env)?;
        let file = config_file.as_deref().map(load).transpose()?;
        Ok(Self {
            database: resolve_database(cli_url, file.as_ref()),
            config_file,
            file: file.unwrap_or_default(),
        })
    }
}

/// The config file to read (see the module docs).
pub fn find_config_file(
    explicit: Option<&Path>,
    env: &SearchEnv,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(Some(path.to_path_buf()))
        } else {
            Err(ConfigError::NotFound {
                path: path.to_path_buf(),
            })
        };
    }
    let local = env.cwd.as_ref().map(|cwd| cwd.join(LOCAL_CONFIG_NAME));
    Ok([local, env.user_config_file()]
        .into_iter()
        .flatten()
        .find(|p| p.is_file()))
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses config text; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // the message without toml's source excerpt, which could quote a password
        let message = without_value(e.message());
        let line = unknown_key_line(text, &message)
            .or_else(|| e.span().map(|span| line_of(text, span.start)));
        ConfigError::Invalid {
            path: path.to_path_buf(),
            location: line.map(|l| format!(" line {l}")).unwrap_or_default(),
            message,
        }
    })
}

/// serde's "invalid type: string \"...\", expected a string" quotes the value, which may be a
/// password: keep only the kind of mistake and what was expected.
fn without_value(message: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if message.starts_with(kind) {
            return match message.split_once(", expected ") {
                Some((_, expected)) => format!("{kind}, expected {expected}"),
                None => kind.to_owned(),
            };
        }
    }
    message.to_owned()
}

/// The 1-based line holding byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// For serde's "unknown field `key`" (whose span covers the whole table, not the key), the line
/// where `key` is assigned.
fn unknown_key_line(text: &str, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// Picks the database by precedence: flag/env (already merged by clap) > file > private cluster.
/// An empty url counts as not given.
pub fn resolve_database(
    cli_url: Option<(String, UrlSource)>,
    file: Option<&ConfigFile>,
) -> DatabaseTarget {
    let from_file = file
        .and_then(|f| f.database_url.clone())
        .map(|url| (url, UrlSource::ConfigFile));
    match cli_url
        .filter(|(url, _)| !url.trim().is_empty())
        .or(from_file.filter(|(url, _)| !url.trim().is_empty()))
    {
        Some((url, source)) => DatabaseTarget::Url { url, source },
        None => DatabaseTarget::PrivateCluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(url: &str) -> ConfigFile {
        ConfigFile {
            database_url: Some(url.into()),
            ..ConfigFile::default()
        }
    }

    #[test]
    fn cosmos_and_migrate_sections_are_read_and_checked() {
        let text =
            "[cosmos]\nendpoint = \"https://h:8081/\"\ndatabase = \"Db\"\n[migrate]\nworkers = 4\n";
        let file = parse(text, Path::new("c.toml")).expect("valid");
        assert_eq!(file.cosmos.and_then(|c| c.database).as_deref(), Some("Db"));
        assert_eq!(file.migrate.and_then(|m| m.workers), Some(4));
        let err = parse("[migrate]\nworkerz = 4\n", Path::new("c.toml")).expect_err("unknown key");
        assert!(err.to_string().contains("workerz"), "{err}");
    }

    #[test]
    fn the_serve_section_is_read_and_checked() {
        let text = "[serve]\nlisten = \"0.0.0.0:9000\"\njwks_url = \"https://idp/jwks\"\n\
                    issuer = \"i\"\naudience = \"a\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
                    jwt_leeway_seconds = 10\n";
        let serve = parse(text, Path::new("c.toml"))
            .expect("valid")
            .serve
            .expect("[serve]");
        assert_eq!(
            serve.listen,
            Some("0.0.0.0:9000".parse().expect("an address"))
        );
        assert_eq!(serve.trusted_proxies, Some(vec!["10.0.0.0/8".to_owned()]));
        assert_eq!(serve.jwt_leeway_seconds, Some(10));
        let err = parse("[serve]\nlisten = \"nowhere\"\n", Path::new("c.toml")).expect_err("bad");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(!err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn the_phase_section_is_read_and_checked() {
        let file =
            parse("[phase]\nmax_verify_age = \"12h\"\n", Path::new("c.toml")).expect("valid");
        assert_eq!(
            file.phase.and_then(|p| p.max_verify_age).as_deref(),
            Some("12h")
        );
        let err = parse("[phase]\nmax_age = \"12h\"\n", Path::new("c.toml")).expect_err("unknown");
        assert!(err.to_string().contains("max_age"), "{err}");
    }

    #[test]
    fn flag_or_env_beats_the_config_file() {
        let target = resolve_database(
            Some(("postgres://flag/db".into(), UrlSource::Flag)),
            Some(&file_with("postgres://file/db")),
        );
        assert_eq!(
            target,
            DatabaseTarget::Url {
                url: "postgres://flag/db".into(),
                source: UrlSource::Flag
            }
        );
    }

    #[test]
    fn config_file_beats_the_private_cluster() {
        let target = resolve_database(None, Some(&file_with("postgres://file/db")));
        assert_eq!(
            target,
            DatabaseTarget::Url {
                url: "postgres://file/db".into(),
                source: UrlSource::ConfigFile
            }
        );
    }

    #[test]
    fn nothing_configured_means_the_private_cluster() {
        assert_eq!(resolve_database(None, None), DatabaseTarget::PrivateCluster);
        assert_eq!(
            resolve_database(None, Some(&ConfigFile::default())),
            DatabaseTarget::PrivateCluster
        );
        // DATABASE_URL= (set but empty) is not a url
        assert_eq!(
            resolve_database(Some((" ".into(), UrlSource::Env)), None),
            DatabaseTarget::PrivateCluster
        );
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key_and_line() {
        let text = "database_url = \"postgres://u:secret@h/db\"\ndatabse_host = \"x\"\n";
        let err = parse(text, Path::new("c.toml")).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("databse_host"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn a_wrongly_typed_value_is_an_error_without_the_value() {
        let err = parse("\ndatabase_url = 5432\n", Path::new("c.toml")).expect_err("type");
        let message = err.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("expected a string"), "{message}");
        assert!(!message.contains("5432"), "{message}");
    }

    #[test]
    fn a_valid_file_parses() {
        let file = parse("database_url = \"postgres://h/db\"\n", Path::new("c.toml"))
            .expect("valid config");
        assert_eq!(file, file_with("postgres://h/db"));
        assert_eq!(
            parse("", Path::new("c.toml")).expect("empty"),
            ConfigFile::default()
        );
    }

    #[test]
    fn local_file_is_preferred_over_the_user_file_and_explicit_must_exist() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let cwd = scratch.path().join("cwd");
        let xdg = scratch.path().join("xdg");
        std::fs::create_dir_all(&cwd).expect("cwd");
        std::fs::create_dir_all(xdg.join("mystira-users")).expect("xdg");
        let env = SearchEnv {
            cwd: Some(cwd.clone()),
            xdg_config_home: Some(xdg.clone()),
            home: None,
        };
        assert_eq!(find_config_file(None, &env).expect("search"), None);

        let user_file = xdg.join("mystira-users/config.toml");
        std::fs::write(&user_file, "").expect("write user file");
        assert_eq!(
            find_config_file(None, &env).expect("search"),
            Some(user_file.clone())
        );

        let local_file = cwd.join(LOCAL_CONFIG_NAME);
        std::fs::write(&local_file, "").expect("write local file");
        assert_eq!(
            find_config_file(None, &env).expect("search"),
            Some(local_file)
        );

        assert_eq!(
            find_config_file(Some(&user_file), &env).expect("explicit"),
            Some(user_file)
        );
        let missing = scratch.path().join("missing.toml");
        assert!(matches!(
            find_config_file(Some(&missing), &env),
            Err(ConfigError::NotFound { .. })
        ));
    }

    #[test]
    fn home_config_is_used_when_xdg_is_unset() {
        let env = SearchEnv {
            cwd: None,
            xdg_config_home: None,
            home: Some("/home/a".into()),
        };
        assert_eq!(
            env.user_config_file(),
            Some(PathBuf::from("/home/a/.config/mystira-users/config.toml"))
        );
    }

    #[test]
    fn settings_read_the_url_from_the_found_file() {
        let scratch = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            scratch.path().join(LOCAL_CONFIG_NAME),
            "database_url = \"postgres://h/db\"\n",
        )
        .expect("write config");
        let env = SearchEnv {
            cwd: Some(scratch.path().to_path_buf()),
            ..SearchEnv::default()
        };
        let settings = Settings::resolve(None, None, &env).expect("settings");
        assert_eq!(
            settings.database,
            DatabaseTarget::Url {
                url: "postgres://h/db".into(),
                source: UrlSource::ConfigFile
            }
        );
        assert_eq!(
            settings.config_file,
            Some(scratch.path().join(LOCAL_CONFIG_NAME))
        );
    }
}
