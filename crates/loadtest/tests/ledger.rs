//! The load generator and the ledger check on the real stores (a real PostgreSQL, the real
//! Cosmos-protocol server): a clean run passes, and the check finds a write that a store lost
//! or changed, a duplicate, and holds each write to what its phase promised; it does not pass
//! a ledger with nothing to check, nor while the journal (table or local files) or the outbox
//! holds entries. The load generator stops at the first ledger write that fails (an intent or an
//! acknowledgement). Each test has its own PostgreSQL database and Cosmos database.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use mystira_cosmos_codec::codec::Container;
use mystira_domain::phase::Phase;
use mystira_domain::ports::AccountRepository;
use mystira_domain::{Account, AccountSettings, Email, Role};
use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::relay::{RelayConfig, relay_once};
use mystira_dual_write::router::{
    DualWriteRouter, FixedPhase, Phase1Copy, Phase2Delivery, PhaseSource, RouterConfig,
};
use mystira_loadtest::ledger::{
    FieldGroups, LedgerError, LedgerRecord, LedgerWriter, Store, Verdict, check,
};
use mystira_loadtest::loadgen::{LoadConfig, LoadError, run_load};
use sqlx::PgPool;
use uuid::Uuid;

struct Setup {
    router: DualWriteRouter,
    store: mystira_cosmos_store::CosmosStore,
    dir: tempfile::TempDir,
}

async fn setup(pool: &PgPool, phase: Phase, test: &str) -> Setup {
    let (store, repos) = support::user_domain(test).await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path().join("journal")).unwrap();
    let router = DualWriteRouter::new(
        pool.clone(),
        repos,
        Arc::new(FixedPhase(phase)),
        files,
        RouterConfig::default(),
    );
    Setup { router, store, dir }
}

async fn load(s: &Setup, seconds: u64) -> std::path::PathBuf {
    let ledger = s.dir.path().join("ledger.jsonl");
    let mut config = LoadConfig::new(50.0, Duration::from_secs(seconds), ledger.clone());
    config.concurrency = 8;
    let report = run_load(&s.router, &config, std::future::pending())
        .await
        .unwrap();
    assert!(report.acknowledged > 40, "{}", report.summary());
    assert_eq!(report.failed, 0, "{}", report.summary());
    drain(s).await;
    ledger
}

/// What `run_background` does beside a router: the outbox relayed until empty (bounded).
async fn drain(s: &Setup) {
    let pool = s.router.pool();
    for _ in 0..100 {
        relay_once(pool, &s.router.cosmos().writer, &RelayConfig::default())
            .await
            .unwrap();
        if mystira_postgres::outbox::depth(pool).await.unwrap().rows == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the outbox did not drain in 10 s");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_clean_phase1_run_passes_and_a_changed_or_duplicated_write_fails(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-p1").await;
    let ledger = load(&s, 3).await;
    let report = check(
        &ledger,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert_eq!(report.verdict, Verdict::Pass);
    assert!(report.drained);
    assert_eq!(report.promises_checked, 2 * report.groups_checked);

    // PostgreSQL loses a profile edit
    let profile: Uuid = sqlx::query_scalar("select id from user_profiles limit 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("update user_profiles set name = 'Someone else' where id = $1")
        .bind(profile)
        .execute(&pool)
        .await
        .unwrap();
    // Cosmos holds a badge twice
    let badged: Uuid =
        sqlx::query_scalar("select user_profile_id from user_badges group by 1 limit 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut doc = s
        .router
        .cosmos()
        .writer
        .read(Container::UserProfiles, badged)
        .await
        .unwrap()
        .unwrap();
    let badges = doc["EarnedBadges"].as_array_mut().unwrap();
    let mut twin = badges[0].clone();
    twin["Id"] = serde_json::json!(Uuid::new_v4().to_string());
    badges.push(twin);
    let id = badged.to_string();
    s.store
        .container("UserProfiles")
        .await
        .unwrap()
        .upsert(id.clone(), &id, &doc)
        .await
        .unwrap();

    let report = check(
        &ledger,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(!report.passed);
    assert!(
        report
            .lost
            .iter()
            .any(|l| l.key == profile && l.store == Store::Postgres && l.group == "profile"),
        "{}",
        report.summary(10)
    );
    assert!(
        report
            .duplicates
            .iter()
            .any(|d| d.key == badged && d.store == Store::Cosmos && d.what.starts_with("badge:")),
        "{}",
        report.summary(10)
    );
    // only keys and field names are reported, never values
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains("Someone else") && !text.contains('@'));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_clean_phase2_run_passes(pool: PgPool) {
    let s = setup(&pool, Phase::DualWritePostgresRead, "ledger-p2").await;
    let ledger = load(&s, 3).await;
    let report = check(
        &ledger,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(report.passed, "{}", report.summary(10));
}

fn account() -> Account {
    let at = Utc.with_ymd_and_hms(2026, 1, 5, 9, 30, 0).unwrap();
    Account {
        id: Uuid::new_v4(),
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{}", Uuid::new_v4().simple())),
        email: Email::parse(&format!("{}@example.org", Uuid::new_v4().simple())).unwrap(),
        display_name: "Sam".to_owned(),
        role: Role::User,
        settings: AccountSettings::default(),
        created_at: at,
        last_login_at: at,
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn each_write_is_held_to_what_its_phase_promised(pool: PgPool) {
    let s = setup(&pool, Phase::CosmosOnly, "ledger-promise").await;
    // written to Cosmos only, as phase 0 does
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    let groups = FieldGroups::account(&a);
    let ack = |path: &std::path::Path, phase: Phase| {
        let w = LedgerWriter::open(path, 1).unwrap();
        let call = w
            .intent("account.create", "Accounts", a.id, groups.clone())
            .unwrap();
        w.ack(
            call,
            phase,
            phase,
            "account.create",
            "Accounts",
            a.id,
            groups.clone(),
        )
        .unwrap();
        w.sync().unwrap();
    };
    let phase0 = s.dir.path().join("phase0.jsonl");
    ack(&phase0, Phase::CosmosOnly);
    let report = check(
        &phase0,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert_eq!(
        report.promises_checked, 2,
        "account and login, in Cosmos only"
    );

    let phase1 = s.dir.path().join("phase1.jsonl");
    ack(&phase1, Phase::DualWriteCosmosRead);
    let report = check(
        &phase1,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(!report.passed);
    assert_eq!(report.lost.len(), 2, "{}", report.summary(10));
    assert!(
        report
            .lost
            .iter()
            .all(|l| l.store == Store::Postgres && l.reason == "missing" && l.key == a.id)
    );

    // a later call that was never acknowledged may be what a store holds: not a lost write
    let renamed = Account {
        display_name: "Sam's parent".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&s.router, &renamed)
        .await
        .unwrap();
    let w = LedgerWriter::open(&phase0, 1).unwrap();
    w.intent(
        "account.update",
        "Accounts",
        a.id,
        FieldGroups::account(&renamed),
    )
    .unwrap();
    w.sync().unwrap();
    let report = check(
        &phase0,
        &pool,
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap();
    assert!(report.passed, "{}", report.summary(10));
    assert_eq!(report.met_by_unacknowledged, 1);
    assert_eq!(report.runs, 2);
}

/// Found by `dual_write_faults::phase1_postgres_down_for_10s_...`: in phase 1, a write that
/// depends on a journalled one (a profile of an account whose copy waits in a local journal
/// file while PostgreSQL was down) is copied directly once PostgreSQL is back, before the
/// journal is replayed. The profile then lands as an orphan (`account_id` null, note
/// `missing_account`), and when the account's copy is replayed nothing re-links it: PostgreSQL
/// keeps a detached profile while Cosmos has it attached, and no later copy repairs it until
/// the profile document itself changes again. Fixed by `bulk::attach_waiting_profiles`: an
/// account's copy attaches the profiles noted `missing_account` for it.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_profile_copied_before_its_journalled_account_is_replayed_stays_attached(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-orphan").await;
    // PostgreSQL down: the account's copy goes to a local journal file
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let files = s.router.file_journal().clone();
    let down = DualWriteRouter::new(
        dead,
        s.router.cosmos().clone(),
        Arc::new(FixedPhase(Phase::DualWriteCosmosRead)),
        files.clone(),
        RouterConfig::default(),
    );
    let a = account();
    AccountRepository::create(&down, &a).await.unwrap();
    assert_eq!(down.stats().journalled_file, 1);
    // PostgreSQL back: the next write, a profile of that account, is copied at once
    let profile = mystira_domain::UserProfile {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: Some(a.id),
        name: "Pip".to_owned(),
        age_group: mystira_domain::AgeGroup::parse("6-9").unwrap(),
        date_of_birth: None,
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: None,
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: vec!["Space".to_owned()],
        has_completed_onboarding: false,
        created_at: a.created_at,
        updated_at: a.created_at,
    };
    mystira_domain::ports::ProfileRepository::create(&s.router, &profile)
        .await
        .unwrap();
    // then the journal is replayed, as run_background does
    files.seal();
    let replayed =
        mystira_dual_write::journal::replay_files(&pool, &files, Some(&s.router.cosmos().writer))
            .await
            .unwrap();
    assert_eq!(replayed.applied, 1);
    let in_pg = mystira_postgres::PgProfileRepository::new(pool.clone());
    let stored = mystira_domain::ports::ProfileRepository::get(&in_pg, profile.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.account_id,
        Some(a.id),
        "the profile stayed detached from its account in PostgreSQL after the replay"
    );
}

/// The version guard (`mystira_postgres::bulk`, `write_in_transaction`) lets a copy with the
/// same `_ts` and another `_etag` through, since `_ts` has one-second resolution. A journalled
/// copy replayed after a newer copy of the same document that landed directly within the same
/// second then overwrote the newer one with the older state. Fixed by `journal::replay_record`:
/// a replay applies the document as Cosmos holds it now, the newest by definition.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_journalled_copy_replayed_after_a_newer_copy_of_the_same_second_does_not_win(
    pool: PgPool,
) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-same-second").await;
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(100))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let files = s.router.file_journal().clone();
    let down = DualWriteRouter::new(
        dead,
        s.router.cosmos().clone(),
        Arc::new(FixedPhase(Phase::DualWriteCosmosRead)),
        files.clone(),
        RouterConfig::default(),
    );
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    // wait for the start of a second, so that the next two writes share their `_ts`
    let ms = Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms) + 20)).await;
    let older = Account {
        display_name: "older".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&down, &older).await.unwrap();
    assert_eq!(down.stats().journalled_file, 1);
    let newer = Account {
        display_name: "newer".to_owned(),
        ..a.clone()
    };
    AccountRepository::update(&s.router, &newer).await.unwrap();
    files.seal();
    mystira_dual_write::journal::replay_files(&pool, &files, Some(&s.router.cosmos().writer))
        .await
        .unwrap();
    let in_cosmos = s.router.cosmos().accounts.get(a.id).await.unwrap().unwrap();
    assert_eq!(in_cosmos.display_name, "newer");
    let in_pg = mystira_postgres::PgAccountRepository::new(pool.clone())
        .get(a.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        in_pg.display_name, "newer",
        "the replayed older copy overwrote the newer one in PostgreSQL"
    );
}

/// The ledger check of this test's world.
async fn check_now(s: &Setup, ledger: &std::path::Path) -> mystira_loadtest::ledger::LedgerReport {
    check(
        ledger,
        s.router.pool(),
        s.router.cosmos(),
        s.router.file_journal().dir(),
    )
    .await
    .unwrap()
}

/// Records `account.create` of `a` as acknowledged in `phase`.
fn record_create(path: &std::path::Path, a: &Account, phase: Phase) {
    let groups = FieldGroups::account(a);
    let w = LedgerWriter::open(path, 1).unwrap();
    let call = w
        .intent("account.create", "Accounts", a.id, groups.clone())
        .unwrap();
    w.ack(
        call,
        phase,
        phase,
        "account.create",
        "Accounts",
        a.id,
        groups,
    )
    .unwrap();
    w.sync().unwrap();
}

/// Found by review (issue 29): the check passed on an empty ledger and on one without an
/// acknowledged write, which prove nothing.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_ledger_without_an_acknowledged_write_has_nothing_to_check(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-nothing").await;
    let empty = s.dir.path().join("empty.jsonl");
    std::fs::write(&empty, b"").unwrap();
    let report = check_now(&s, &empty).await;
    assert_eq!(
        report.verdict,
        Verdict::NothingToCheck,
        "{}",
        report.summary(10)
    );
    assert!(!report.passed);
    assert!(report.summary(10).contains("NOTHING TO CHECK"));

    // a run whose every call failed: intents, no acknowledgement
    let failed = s.dir.path().join("failed.jsonl");
    let a = account();
    let w = LedgerWriter::open(&failed, 1).unwrap();
    w.intent("account.create", "Accounts", a.id, FieldGroups::account(&a))
        .unwrap();
    w.sync().unwrap();
    let report = check_now(&s, &failed).await;
    assert_eq!((report.runs, report.intents, report.acks), (1, 1, 0));
    assert_eq!(
        report.verdict,
        Verdict::NothingToCheck,
        "{}",
        report.summary(10)
    );
    assert!(!report.passed);
}

/// Found by review (issue 29): a check run while writes still waited in the journal or the
/// outbox passed as long as the ledger's own writes had landed, and the local journal files
/// were not looked at at all. Each kind of backlog, alone, must keep the check from passing,
/// and name itself; once drained, the same ledger passes.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_check_before_the_backlog_drained_does_not_pass_and_names_what_waits(pool: PgPool) {
    let s = setup(&pool, Phase::DualWriteCosmosRead, "ledger-backlog").await;
    let ledger = s.dir.path().join("ledger.jsonl");
    let a = account();
    AccountRepository::create(&s.router, &a).await.unwrap();
    record_create(&ledger, &a, Phase::DualWriteCosmosRead);
    let report = check_now(&s, &ledger).await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.summary(10));

    // other routers' writes, not in this ledger, wait in each place in turn
    let router_with = |pool: PgPool, phase: Phase, config: RouterConfig| {
        DualWriteRouter::new(
            pool,
            s.router.cosmos().clone(),
            Arc::new(FixedPhase(phase)),
            s.router.file_journal().clone(),
            config,
        )
    };
    let writer = &s.router.cosmos().writer;

    // 1. a local journal file (PostgreSQL unreachable in phase 1)
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let down = router_with(dead, Phase::DualWriteCosmosRead, RouterConfig::default());
    AccountRepository::create(&down, &account()).await.unwrap();
    assert_eq!(down.stats().journalled_file, 1);
    let report = check_now(&s, &ledger).await;
    assert_eq!(
        report.verdict,
        Verdict::NotDrained,
        "{}",
        report.summary(10)
    );
    assert!(!report.passed && !report.drained);
    assert_eq!(
        (
            report.backlog.journal_entries,
            report.backlog.outbox_rows,
            report.backlog.journal_file_records
        ),
        (0, 0, 1)
    );
    assert!(report.summary(10).contains("local journal files"));
    let files = s.router.file_journal();
    files.seal();
    mystira_dual_write::journal::replay_files(&pool, files, Some(writer))
        .await
        .unwrap();
    assert_eq!(check_now(&s, &ledger).await.verdict, Verdict::Pass);

    // 2. the journal table (phase-1 copies through the journal, not yet replayed)
    let journalling = router_with(
        pool.clone(),
        Phase::DualWriteCosmosRead,
        RouterConfig {
            phase1_copy: Phase1Copy::Journal,
            ..RouterConfig::default()
        },
    );
    AccountRepository::create(&journalling, &account())
        .await
        .unwrap();
    let report = check_now(&s, &ledger).await;
    assert_eq!(
        report.verdict,
        Verdict::NotDrained,
        "{}",
        report.summary(10)
    );
    assert!(report.backlog.journal_entries > 0);
    assert_eq!(report.backlog.outbox_rows, 0);
    assert_eq!(report.backlog.journal_file_records, 0);
    assert!(report.summary(10).contains("migration.retry_journal"));
    mystira_dual_write::journal::replay_table(&pool, 200, Some(writer))
        .await
        .unwrap();
    assert_eq!(check_now(&s, &ledger).await.verdict, Verdict::Pass);

    // 3. the outbox (phase-2 deliveries left to the background)
    let delivering_later = router_with(
        pool.clone(),
        Phase::DualWritePostgresRead,
        RouterConfig {
            phase2_delivery: Phase2Delivery::Background,
            ..RouterConfig::default()
        },
    );
    AccountRepository::create(&delivering_later, &account())
        .await
        .unwrap();
    let report = check_now(&s, &ledger).await;
    assert_eq!(
        report.verdict,
        Verdict::NotDrained,
        "{}",
        report.summary(10)
    );
    assert!(report.backlog.outbox_rows > 0);
    assert_eq!(report.backlog.journal_entries, 0);
    assert_eq!(report.backlog.journal_file_records, 0);
    assert!(report.summary(10).contains("migration.outbox"));
    drain(&s).await;
    let report = check_now(&s, &ledger).await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.summary(10));
    assert!(report.passed && report.drained);
}

// ---------------------------------------------------------------------------------------------
// the ledger failing under the load generator

/// A ledger that is a FIFO. The test holds its only reader (opened read-write, which Linux
/// allows without a writer) and closes it on cue; from then on every write to the ledger fails
/// with EPIPE, as a real write failure does.
#[derive(Debug)]
struct PipeLedger {
    path: std::path::PathBuf,
    reader: std::sync::Mutex<Option<std::fs::File>>,
    /// What had been written when the reader was closed.
    captured: std::sync::Mutex<Vec<u8>>,
}

impl PipeLedger {
    fn new(dir: &std::path::Path) -> Arc<Self> {
        let path = dir.join("ledger.pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Arc::new(Self {
            path,
            reader: std::sync::Mutex::new(Some(reader)),
            captured: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Keeps what the pipe holds (at least the run's first record, so the read cannot block),
    /// then closes the only reader.
    fn close(&self) {
        use std::io::Read as _;
        let Some(mut reader) = self.reader.lock().unwrap().take() else {
            return;
        };
        let mut buf = vec![0u8; 256 * 1024];
        let n = reader.read(&mut buf).unwrap();
        self.captured.lock().unwrap().extend_from_slice(&buf[..n]);
    }

    fn closed(&self) -> bool {
        self.reader.lock().unwrap().is_none()
    }

    /// The records written before the close.
    fn records(&self) -> Vec<LedgerRecord> {
        String::from_utf8(self.captured.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The phase, fixed; closes the pipe ledger at the `at`-th lookup (only at one for an account,
/// with `account_only`). The load generator looks the phase up right after a call's intent is
/// written and again right before its acknowledgement is, and the router inside the call: a
/// close there makes the next ledger write the call's acknowledgement, or (for a call that
/// failed, which has none) the next call's intent.
#[derive(Debug)]
struct CloseOnLookup {
    phase: Phase,
    at: usize,
    account_only: bool,
    lookups: std::sync::atomic::AtomicUsize,
    pipe: Arc<PipeLedger>,
}

impl PhaseSource for CloseOnLookup {
    fn phase_for(&self, account: Option<Uuid>) -> Phase {
        let n = 1 + self
            .lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.at && (account.is_some() || !self.account_only) {
            self.pipe.close();
        }
        self.phase
    }
}

/// One call at a time, for up to two minutes: a run that does not stop at the failure shows as
/// a timeout of the caller.
fn one_at_a_time(ledger: &std::path::Path) -> LoadConfig {
    let mut config = LoadConfig::new(50.0, Duration::from_secs(120), ledger.to_owned());
    config.concurrency = 1;
    config
}

fn op_count(report: &mystira_loadtest::loadgen::LoadReport, op: &str, ok: bool) -> u64 {
    report
        .per_op
        .iter()
        .filter(|o| o.op == op)
        .map(|o| if ok { o.ok } else { o.calls })
        .sum()
}

fn broken_pipe(e: &LedgerError) -> bool {
    matches!(e, LedgerError::File { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Found by review (issue 29): a failed acknowledgement write only set a warning, the call
/// still counted as acknowledged and the run went on (exit 0). Now the run stops there, with
/// an error, and that call is counted as made but not acknowledged.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_failed_acknowledgement_write_stops_the_run_and_is_not_counted(pool: PgPool) {
    let (_store, repos) = support::user_domain("ledger-ack-fails").await;
    let dir = tempfile::tempdir().unwrap();
    let pipe = PipeLedger::new(dir.path());
    // an account call is in flight after a few users' first steps: its acknowledgement fails
    let phases = Arc::new(CloseOnLookup {
        phase: Phase::DualWriteCosmosRead,
        at: 20,
        account_only: true,
        lookups: Default::default(),
        pipe: pipe.clone(),
    });
    let router = DualWriteRouter::new(
        pool.clone(),
        repos,
        phases,
        FileJournal::open(dir.path().join("journal")).unwrap(),
        RouterConfig::default(),
    );
    let config = one_at_a_time(&pipe.path);
    let run = run_load(&router, &config, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run went on after its ledger failed");
    let Err(LoadError::LedgerWrite { source, report }) = result else {
        panic!("a failed ledger write must fail the run: {result:?}");
    };
    assert!(pipe.closed());
    assert!(broken_pipe(&source), "{source}");
    assert!(report.elapsed_seconds < 20.0, "{}", report.summary());

    let records = pipe.records();
    let intents = records
        .iter()
        .filter(|r| matches!(r, LedgerRecord::Intent { .. }))
        .count() as u64;
    let acks = records
        .iter()
        .filter(|r| matches!(r, LedgerRecord::Ack { .. }))
        .count() as u64;
    assert!(
        matches!(records.last(), Some(LedgerRecord::Intent { container, .. }) if container == "Accounts"),
        "the call in flight at the failure was an account call"
    );
    assert_eq!(report.unrecorded, 1, "{}", report.summary());
    // `signup.verify` writes nothing checkable: no intent, no acknowledgement
    assert_eq!(
        report.acknowledged - op_count(&report, "signup.verify", true),
        acks,
        "only recorded acknowledgements count: {}",
        report.summary()
    );
    assert_eq!(
        report.calls,
        intents + op_count(&report, "signup.verify", false),
        "every call made had its intent written, and none was made after the failure: {}",
        report.summary()
    );
}

/// Found by review (issue 29): a failed intent write skipped its call but the run went on,
/// every later call failing the same way. Now the run stops there, before that call is made.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_failed_intent_write_stops_the_run_before_its_call(pool: PgPool) {
    let (_store, repos) = support::user_domain("ledger-intent-fails").await;
    let dir = tempfile::tempdir().unwrap();
    let pipe = PipeLedger::new(dir.path());
    // phase 2 with PostgreSQL unreachable: every call fails, so none writes an
    // acknowledgement, and the first write after the close is the next call's intent
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(100))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    drop(pool);
    let phases = Arc::new(CloseOnLookup {
        phase: Phase::DualWritePostgresRead,
        at: 4,
        account_only: false,
        lookups: Default::default(),
        pipe: pipe.clone(),
    });
    let router = DualWriteRouter::new(
        dead,
        repos,
        phases,
        FileJournal::open(dir.path().join("journal")).unwrap(),
        RouterConfig::default(),
    );
    let config = one_at_a_time(&pipe.path);
    let run = run_load(&router, &config, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run went on after its ledger failed");
    let Err(LoadError::LedgerWrite { source, report }) = result else {
        panic!("a failed ledger write must fail the run: {result:?}");
    };
    assert!(broken_pipe(&source), "{source}");
    let records = pipe.records();
    let intents = records
        .iter()
        .filter(|r| matches!(r, LedgerRecord::Intent { .. }))
        .count() as u64;
    assert!(intents > 0);
    assert_eq!(report.acknowledged, 0, "{}", report.summary());
    assert_eq!(report.unrecorded, 0, "{}", report.summary());
    assert_eq!(
        report.calls,
        intents,
        "the call whose intent could not be written must not be made: {}",
        report.summary()
    );
    assert_eq!(report.failed, report.calls);
}
