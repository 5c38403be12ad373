//! `mystira-users serve`: the user-domain service (the HTTP layer is `mystira_server`). This
//! wires it: the database (the self-started cluster when none is configured), the Cosmos
//! account when one is configured, the phase watcher, the listener and the stop signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use mystira_migrate::phase::PhaseWatcher;
use mystira_server::{AppState, Metrics};
use serde_json::json;

use super::{Outcome, db, source, stop};
use crate::cli::CosmosArgs;
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is logged)
    #[arg(
        long,
        env = "MYSTIRA_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// How long /readyz waits for each store, in milliseconds
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub probe_timeout_ms: u64,

    /// How often the phase is re-read besides PostgreSQL's notifications, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub phase_poll_ms: u64,
}

pub async fn run(args: &ServeArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = db::prepared_pool(settings, 8).await?;
    let cosmos = if source::cosmos_endpoint(&args.cosmos, settings).is_some() {
        Some(source::connect_cosmos(&args.cosmos, settings).await?)
    } else {
        tracing::info!("no Cosmos account configured: serving on PostgreSQL alone");
        None
    };
    let phase = PhaseWatcher::start(pool.clone(), Duration::from_millis(args.phase_poll_ms))
        .await
        .context("cannot read the migration phase")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // scripts (and the tests) read this line to find a port chosen with :0
    tracing::info!(%address, phase = phase.domain_phase().name(), "serving");
    let state = AppState {
        pool: pool.clone(),
        cosmos,
        phase,
        metrics: Arc::new(Metrics::new()),
        probe_timeout: Duration::from_millis(args.probe_timeout_ms),
    };
    mystira_server::serve(listener, state, stop::stop_signal())
        .await
        .context("the server failed")?;
    pool.close().await;
    Ok(Outcome {
        exit: Exit::Ok,
        human: format!("stopped serving on {address}: requests in flight were answered"),
        json: json!({ "address": address.to_string(), "stopped": true }),
    })
}
