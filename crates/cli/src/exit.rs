//! The process exit codes, defined once: the README and `--help` quote [`EXIT_CODES_HELP`].

/// How `mystira-users` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked, and nothing needs attention.
    Ok,
    /// The command failed (database unreachable, PostgreSQL missing, a migration failed, ...).
    Failure,
    /// The command line or the configuration is wrong (clap uses 2 for usage errors as well).
    Usage,
    /// The command worked and found something that needs attention (for `db status`: pending
    /// migrations, or an applied migration whose file was edited).
    Attention,
    /// The command had nothing to work on, so its answer proves nothing (`ledger check`: the
    /// ledger holds no acknowledged write).
    NothingToCheck,
    /// A change that needs a person's confirmation did not get it (`phase set/clear` out of
    /// postgres-only: no terminal to type it in and no `--yes`, or the typed text did not
    /// match). Nothing was changed.
    NotConfirmed,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failure => 1,
            Self::Usage => 2,
            Self::Attention => 3,
            Self::NothingToCheck => 4,
            Self::NotConfirmed => 5,
        }
    }

    /// The exit code for an error: usage for configuration mistakes, failure for the rest.
    pub fn for_error(error: &anyhow::Error) -> Self {
        let load_mode = |e: &(dyn std::error::Error + 'static)| {
            matches!(
                e.downcast_ref::<mystira_migrate::backfill::BackfillError>(),
                Some(mystira_migrate::backfill::BackfillError::LoadMode(_))
            )
        };
        if error
            .chain()
            .any(|e| e.is::<crate::config::ConfigError>() || load_mode(e))
        {
            Self::Usage
        } else {
            Self::Failure
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// The exit codes as shown in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failure (database unreachable, PostgreSQL not installed, a migration failed, ...)
  2  usage or configuration error (bad flag, unreadable or invalid config file)
  3  needs attention (db status: migrations pending, or an applied migration was edited;
     phase set/clear: refused by a gate; journal status/replay: entries wait;
     relay --drain: rows left; quarantine: open entries; status: something under
     `attention`; ledger check: the retry journal table, the outbox or the local
     journal files still hold entries)
  4  nothing to check (ledger check: the ledger holds no acknowledged write)
  5  not confirmed (phase set/clear out of postgres-only: no terminal for the typed
     confirmation and no --yes, or the typed text did not match); nothing changed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_anywhere_in_the_chain_are_usage_errors() {
        let config = crate::config::ConfigError::NotFound {
            path: "/nope.toml".into(),
        };
        let wrapped = anyhow::Error::new(config).context("loading settings");
        assert_eq!(Exit::for_error(&wrapped), Exit::Usage);
        assert_eq!(
            Exit::for_error(&anyhow::anyhow!("connection refused")),
            Exit::Failure
        );
    }

    #[test]
    fn help_text_lists_every_code() {
        for exit in [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Attention,
            Exit::NothingToCheck,
            Exit::NotConfirmed,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {}  ", exit.code())));
        }
    }
}
