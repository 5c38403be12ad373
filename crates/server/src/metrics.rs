//! `/metrics` in the OpenMetrics text format Prometheus scrapes.
//!
//! Two kinds of figures: request counters and latency histograms, kept in the process by a
//! middleware, and the dual-write router's store-write latencies and failures, which it reports
//! to [`Metrics`] as its [`WriteObserver`]; and the migration's state (phase, retry journal,
//! outbox, last verify, backfill ranges, replication lag, the long-runners' heartbeats), read
//! from PostgreSQL at each scrape as one [`MigrationState`] snapshot (the admin API's and
//! `status`'s read), so every replica reports the same shared state and nothing has to be
//! pushed. When PostgreSQL does not answer, those gauges keep their last
//! values and `mystira_postgres_up` drops to 0.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mystira_dual_write::router::{Store, WriteObserver};
use mystira_dual_write::status::MigrationState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::AppState;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// One of a fixed set ([`method_label`]): a made-up method is `other`.
    method: String,
    /// The route's pattern (`/readyz`), never the raw path: paths will carry ids.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    /// `signup-client`, `verify-client` or `signup-email`: the budget, never whose.
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreWriteLabels {
    /// `cosmos` or `postgres`.
    store: String,
    /// The port's call (`accounts.create`) or the router's second half (`phase1_copy`,
    /// `phase2_delivery`).
    operation: String,
    /// `ok` or `error`.
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    /// `journalled_postgres`, `journalled_file`, `left_to_relay` or `unrecorded`.
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    /// `replicate` or `relay`: never a host or a pid (unbounded).
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Every metric the process exposes, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    rate_limited: Family<LimitLabels, Counter>,
    store_write_seconds: Family<StoreWriteLabels, Histogram>,
    dual_write_failures: Family<FailureLabels, Counter>,
    replication_lag: Family<ContainerLabels, FloatGauge>,
    feed_disagreeing_ranges: Family<ContainerLabels, Gauge>,
    worker_heartbeat_age: Family<WorkerLabels, FloatGauge>,
    workers_retrying: Family<WorkerLabels, Gauge>,
    connections_open: Gauge,
    connections_refused: Counter,
    postgres_up: Gauge,
    scrape_errors: Counter,
    phase: Gauge,
    journal_entries: Gauge,
    journal_oldest_age: FloatGauge,
    outbox_rows: Gauge,
    outbox_oldest_age: FloatGauge,
    verify_clean_age: FloatGauge,
    verify_drift_since_clean: Gauge,
    backfill_ranges_done: Gauge,
    backfill_ranges_total: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mystira");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status",
            requests.clone(),
        );
        // 1 ms to ~33 s
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route pattern",
            request_seconds.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Sign-up requests refused with 429, by the budget they exceeded",
            rate_limited.clone(),
        );
        // 0.5 ms to ~16 s
        let store_write_seconds =
            Family::<StoreWriteLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            });
        registry.register(
            "store_write_duration_seconds",
            "Time of each store call the dual-write router made for a write, by store, \
             operation and outcome (serve with a Cosmos account configured)",
            store_write_seconds.clone(),
        );
        let dual_write_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "dual_write_failures",
            "Dual writes whose second store did not take them in the call: journalled_postgres, \
             journalled_file, left_to_relay (delivered later), unrecorded (the caller got an \
             error)",
            dual_write_failures.clone(),
        );
        let replication_lag = Family::<ContainerLabels, FloatGauge>::default();
        registry.register(
            "replication_lag_seconds",
            "Per container: seconds since its least recently caught-up replication range had \
             everything Cosmos held applied (an upper bound on how far PostgreSQL is behind; \
             -1 until every range has caught up once)",
            replication_lag.clone(),
        );
        let feed_disagreeing_ranges = Family::<ContainerLabels, Gauge>::default();
        registry.register(
            "replication_feed_disagreeing_ranges",
            "Per container: replication ranges whose change feed the last _ts probe of the same \
             range found missing documents changed in Cosmos (0 when every probed range \
             agrees; auto mode reads such a range from the _ts watermark instead)",
            feed_disagreeing_ranges.clone(),
        );
        let worker_heartbeat_age = Family::<WorkerLabels, FloatGauge>::default();
        registry.register(
            "worker_heartbeat_age_seconds",
            "Per kind of long-running worker (replicate, relay): seconds since the newest \
             heartbeat any of them wrote (-1 when none has in the last day); a worker beats \
             every 5 s while it runs, also while it waits out a store outage",
            worker_heartbeat_age.clone(),
        );
        let workers_retrying = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "workers_retrying",
            "Per kind of long-running worker: how many live ones are waiting out a store outage",
            workers_retrying.clone(),
        );
        let m = Self {
            registry,
            requests,
            request_seconds,
            rate_limited,
            store_write_seconds,
            dual_write_failures,
            replication_lag,
            feed_disagreeing_ranges,
            worker_heartbeat_age,
            workers_retrying,
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            postgres_up: Gauge::default(),
            scrape_errors: Counter::default(),
            phase: Gauge::default(),
            journal_entries: Gauge::default(),
            journal_oldest_age: FloatGauge::default(),
            outbox_rows: Gauge::default(),
            outbox_oldest_age: FloatGauge::default(),
            verify_clean_age: FloatGauge::default(),
            verify_drift_since_clean: Gauge::default(),
            backfill_ranges_done: Gauge::default(),
            backfill_ranges_total: Gauge::default(),
        };
        m.register_state()
    }

    fn register_state(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "http_connections_open",
            "TCP connections the service holds open (at most --max-connections)",
            self.connections_open.clone(),
        );
        r.register(
            "http_connections_refused",
            "Connections answered 503 too_many_connections and closed: over --max-connections",
            self.connections_refused.clone(),
        );
        r.register(
            "postgres_up",
            "1 when the last scrape could read the migration state from PostgreSQL",
            self.postgres_up.clone(),
        );
        r.register(
            "metrics_scrape_errors",
            "Scrapes that could not read the migration state from PostgreSQL",
            self.scrape_errors.clone(),
        );
        r.register(
            "phase",
            "The domain-wide migration phase: 0 cosmos-only, 1 dual-write-cosmos-read, \
             2 dual-write-postgres-read, 3 postgres-only",
            self.phase.clone(),
        );
        r.register(
            "retry_journal_entries",
            "Phase-1 writes Cosmos took that PostgreSQL has not (the journal table)",
            self.journal_entries.clone(),
        );
        r.register(
            "retry_journal_oldest_age_seconds",
            "Age of the oldest retry-journal entry (0 when empty)",
            self.journal_oldest_age.clone(),
        );
        r.register(
            "outbox_rows",
            "PostgreSQL writes Cosmos has not taken yet",
            self.outbox_rows.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest outbox row (0 when empty)",
            self.outbox_oldest_age.clone(),
        );
        r.register(
            "verify_last_clean_age_seconds",
            "Age of the newest clean full verify (-1 when there is none)",
            self.verify_clean_age.clone(),
        );
        r.register(
            "verify_drift_since_clean",
            "1 when a verify found drift after the newest clean one (or with no clean one)",
            self.verify_drift_since_clean.clone(),
        );
        r.register(
            "backfill_ranges_done",
            "Work ranges of the backfill job that are finished",
            self.backfill_ranges_done.clone(),
        );
        r.register(
            "backfill_ranges",
            "Work ranges of the backfill job",
            self.backfill_ranges_total.clone(),
        );
        self
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A connection was closed (or cut at the shutdown deadline).
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A connection over the cap was refused.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a request refused by the rate limit `limit`.
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    fn observe(&self, method: &str, route: &str, status: StatusCode, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Reads the migration state into the gauges.
    async fn refresh(&self, pool: &PgPool, phase: u8) {
        self.phase.set(i64::from(phase));
        match MigrationState::read(pool).await {
            Ok(s) => {
                self.postgres_up.set(1);
                let age = |t: Option<DateTime<Utc>>| {
                    t.map_or(0.0, |t| (s.read_at - t).num_milliseconds() as f64 / 1000.0)
                };
                self.journal_entries.set(s.journal.entries);
                self.journal_oldest_age.set(age(s.journal.oldest));
                self.outbox_rows.set(s.outbox.rows);
                self.outbox_oldest_age.set(age(s.outbox.oldest));
                let (clean, drift) = (s.verify.latest_clean, s.verify.latest_drift);
                self.verify_clean_age
                    .set(clean.map_or(-1.0, |t| age(Some(t))));
                let drift = match (clean, drift) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(clean), Some(drift)) => drift > clean,
                };
                self.verify_drift_since_clean.set(i64::from(drift));
                self.backfill_ranges_done.set(s.backfill_ranges.done);
                self.backfill_ranges_total.set(s.backfill_ranges.total);
                for (container, lag) in s.replication_lag_seconds {
                    self.replication_lag
                        .get_or_create(&ContainerLabels { container })
                        .set(lag.unwrap_or(-1.0));
                }
                for (container, ranges) in s.feed_disagreeing_ranges {
                    self.feed_disagreeing_ranges
                        .get_or_create(&ContainerLabels { container })
                        .set(ranges);
                }
                for (kind, age, retrying) in s.worker_beats {
                    let labels = WorkerLabels {
                        kind: kind.as_str().to_owned(),
                    };
                    self.worker_heartbeat_age
                        .get_or_create(&labels)
                        .set(age.unwrap_or(-1.0));
                    self.workers_retrying.get_or_create(&labels).set(retrying);
                }
            }
            Err(e) => {
                self.postgres_up.set(0);
                self.scrape_errors.inc();
                tracing::warn!(error = %e, "metrics: cannot read the migration state");
            }
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl WriteObserver for Metrics {
    fn store_write(&self, store: Store, operation: &'static str, took: Duration, ok: bool) {
        self.store_write_seconds
            .get_or_create(&StoreWriteLabels {
                store: store.name().to_owned(),
                operation: operation.to_owned(),
                outcome: if ok { "ok" } else { "error" }.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    fn dual_write_failure(&self, kind: &'static str, n: u64) {
        self.dual_write_failures
            .get_or_create(&FailureLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }
}

/// Counts and times every request (the scrape itself included).
pub(crate) async fn track_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .observe(method, &route, response.status(), started.elapsed());
    response
}

/// The `method` label: one of the methods of RFC 9110 and PATCH, else `other`. A client may
/// send any token as a method (hyper accepts kilobytes of it), and every distinct label value
/// is a series held for the life of the process: unbounded, they were a memory exhaustion.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    state
        .metrics
        .refresh(&state.pool, state.phase.domain_phase().number())
        .await;
    match state.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => crate::Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_encoding",
            "the metrics could not be encoded",
        )
        .into_response(),
    }
}
