//! Logging to stderr with `tracing`, so stdout carries only a command's output. Human-readable
//! lines by default, JSON lines with `--json`. `RUST_LOG` overrides the level chosen by
//! `-v`/`--quiet`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::GlobalArgs;

/// Installs the global subscriber.
pub fn init(global: &GlobalArgs) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_directives(global.verbose, global.quiet)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if global.json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(global.verbose > 0)
            .init();
    }
}

/// The filter for a verbosity. sqlx stays at warn below -vv: at info and debug it logs every
/// statement. The Azure SDK's info lines (regions, HTTP versions) are noise for an operator.
fn default_directives(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => {
            "info,sqlx=warn,azure_core=warn,azure_data_cosmos=warn,azure_data_cosmos_driver=warn"
        }
        (false, 1) => {
            "debug,sqlx=warn,azure_core=info,azure_data_cosmos=info,azure_data_cosmos_driver=info"
        }
        (false, _) => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verbosity_gives_a_valid_filter_and_quiet_wins() {
        for (verbose, quiet) in [(0, false), (1, false), (2, false), (0, true)] {
            let directives = default_directives(verbose, quiet);
            assert!(EnvFilter::try_new(directives).is_ok(), "{directives}");
        }
        assert_eq!(default_directives(0, true), "error");
        assert_ne!(default_directives(0, false), default_directives(1, false));
    }
}
