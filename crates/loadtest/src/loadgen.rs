//! The load generator: drives a [`DualWriteRouter`] at a fixed rate with a realistic, seeded
//! mix of user-domain calls and records every call in a ledger ([`crate::ledger`]), so that
//! after faults [`crate::ledger::check`] can prove that no acknowledged write was lost.
//!
//! # The mix
//! Simulated users go through the app's flows: a sign-up request (a pending sign-up with an
//! emailed code), its verification (now and then a wrong code first), `mark_used`, the account
//! and a first profile; then, at random, logins, profile edits and onboarding, badge awards,
//! completed scenarios, subscription changes, account edits, sign-ins (a pending sign-in,
//! verified and used, then a login) and further profiles. New users keep arriving. Every value
//! is derived from the seed and the run number (a restarted generator appending to the same
//! ledger starts a new run, so its users are new), and times are whole milliseconds, which both
//! stores keep exactly.
//!
//! # Pacing
//! Open loop: a call starts every `1/rate` seconds whatever the previous calls do, so a slow
//! store shows as latency, not as a lower rate, up to `concurrency` calls in flight; a call
//! that would pass that bound is not made and is counted (`over_concurrency`). The calls of one
//! simulated user run one at a time (a user waits for the app's answer), which is also what
//! makes the ledger's order the order of the writes on each aggregate.
//!
//! # Failures
//! A failed call is counted by operation and error class; it leaves only its intent in the
//! ledger. The user then behaves as the app would: a failed creation is tried again with the
//! same entity (a conflict on the id then means the first try landed), a failed step of a
//! sign-up abandons it (a new one is requested), and any other failed write is simply followed
//! by the user's next call.
//!
//! # The ledger failing
//! A call is made only once its intent is written, and counts as acknowledged only once its
//! acknowledgement is written. The first ledger write (or fsync) that fails stops the run: no
//! call is started after it, the calls in flight finish (bounded by the settle timeout), and
//! [`run_load`] returns [`LoadError::LedgerWrite`] with the report of what was done until then.
//! A run whose ledger cannot be written proves nothing, and going on would only pile up work.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mystira_domain::error::ConflictKind;
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, AwardOutcome, BadgeRepository, CompletedScenarioRepository,
    PendingSignupRepository, ProfileRepository, RepoResult, SubscriptionRepository, VerifyOutcome,
};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, Email, PendingSignup, RepoError, Role, SignupCode,
    Subscription, SubscriptionType, UserBadge, UserProfile,
};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

use crate::ledger::{FieldGroups, Groups, LedgerError, LedgerWriter};
use mystira_dual_write::router::{DualWriteRouter, RouterStats};

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Calls started per second.
    pub rate: f64,
    pub duration: Duration,
    /// Calls in flight at most.
    pub concurrency: usize,
    pub seed: u64,
    pub ledger: PathBuf,
    /// How often buffered acknowledgements are fsynced.
    pub sync_interval: Duration,
    /// After `duration` (or a stop), how long calls still in flight are waited for.
    pub settle_timeout: Duration,
}

impl LoadConfig {
    pub fn new(rate: f64, duration: Duration, ledger: PathBuf) -> Self {
        Self {
            rate,
            duration,
            concurrency: 16,
            seed: 1,
            ledger,
            sync_interval: Duration::from_millis(200),
            settle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("the rate must be a positive number of calls per second")]
    BadRate,
    /// The ledger could not be opened, or its run record not written: no call was made.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A ledger write failed during the run, which was stopped at once; `report` says what was
    /// done until then (`unrecorded`: calls the router acknowledged whose acknowledgement
    /// could not be written).
    #[error(
        "a ledger write failed, so the run was stopped after {} calls ({} acknowledged and \
         recorded)",
        report.calls,
        report.acknowledged
    )]
    LedgerWrite {
        #[source]
        source: LedgerError,
        report: Box<LoadReport>,
    },
}

/// Latency of one operation in one phase (successful calls only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpStats {
    pub op: &'static str,
    pub phase: Phase,
    pub calls: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub run: u64,
    pub seed: u64,
    pub elapsed_seconds: f64,
    pub target_rate: f64,
    /// Calls started per second.
    pub achieved_rate: f64,
    pub calls: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Calls the router acknowledged whose acknowledgement could not be written to the ledger
    /// (the run stopped there): not counted as acknowledged.
    pub unrecorded: u64,
    /// Failed calls by error class (`unavailable`, `conflict`, `invalid`, `store`,
    /// `unexpected`: an answer the flow did not expect, such as `Ok(false)`).
    pub errors: BTreeMap<String, u64>,
    /// Ticks at which no call was started because `concurrency` calls were in flight.
    pub over_concurrency: u64,
    /// Calls still in flight when the settle timeout passed (abandoned).
    pub abandoned: u64,
    pub users: u64,
    pub ledger_lines: u64,
    pub per_op: Vec<OpStats>,
    pub router: RouterStats,
}

impl LoadReport {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "loadgen run {} (seed {}): {} calls in {:.1} s ({:.1}/s, target {:.1}/s), {} \
             acknowledged, {} failed, {} acknowledged but not recorded, {} skipped at the \
             concurrency bound, {} abandoned; {} users; {} ledger lines\n",
            self.run,
            self.seed,
            self.calls,
            self.elapsed_seconds,
            self.achieved_rate,
            self.target_rate,
            self.acknowledged,
            self.failed,
            self.unrecorded,
            self.over_concurrency,
            self.abandoned,
            self.users,
            self.ledger_lines,
        );
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push_str(&format!("errors: {}\n", e.join(", ")));
        }
        out.push_str(&format!(
            "{:<22} {:<26} {:>7} {:>7} {:>7} {:>9} {:>9}\n",
            "operation", "phase", "calls", "ok", "failed", "p50 ms", "p99 ms"
        ));
        for s in &self.per_op {
            out.push_str(&format!(
                "{:<22} {:<26} {:>7} {:>7} {:>7} {:>9.2} {:>9.2}\n",
                s.op,
                s.phase.name(),
                s.calls,
                s.ok,
                s.failed,
                s.p50_ms,
                s.p99_ms
            ));
        }
        let r = &self.router;
        out.push_str(&format!(
            "router: {} copied, {} journalled (table), {} journalled (file), {} delivered \
             inline, {} left to the relay\n",
            r.copied, r.journalled_postgres, r.journalled_file, r.delivered_inline, r.left_to_relay
        ));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// randomness: splitmix64, seeded per run and per user, so a run's values follow from its seed

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// Stream `stream` of `seed`. Both are mixed before they meet: splitmix64 walks its state
    /// by a constant step, so unmixed neighbouring streams would replay each other's values
    /// one step apart (and users would share ids).
    fn new(seed: u64, stream: u64) -> Self {
        let mixed_seed = Rng(seed).next();
        let mixed_stream = Rng(stream ^ 0x5851_f42d_4c95_7f2d).next();
        Rng(mixed_seed ^ mixed_stream.rotate_left(17))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Now, in whole milliseconds (both stores keep those exactly).
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

const NAMES: [&str; 8] = ["Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Ivy"];
const THEMES: [&str; 5] = ["Classic Fantasy", "Space", "Mystery", "Animals", "Pirates"];
const AGE_GROUPS: [&str; 4] = ["3-5", "6-9", "10-12", "13-18"];
const TIERS: [&str; 3] = ["Basic", "Plus", "Family"];

// ---------------------------------------------------------------------------------------------
// simulated users

#[derive(Debug)]
struct Flow {
    signup: PendingSignup,
    code: String,
    created: bool,
    wrong_left: u32,
    verified: bool,
}

#[derive(Debug)]
struct Profile {
    profile: UserProfile,
    created: bool,
    badges: u32,
}

#[derive(Debug)]
struct User {
    n: u64,
    rng: Rng,
    email: Email,
    account: Option<Account>,
    account_created: bool,
    subscription: Option<Subscription>,
    profiles: Vec<Profile>,
    scenarios: u32,
    flow: Option<Flow>,
    edits: u32,
}

impl User {
    fn new(seed: u64, run: u64, n: u64) -> Self {
        let mut rng = Rng::new(seed, (run << 40) ^ n);
        let tag = rng.uuid().simple().to_string();
        let email = Email::parse(&format!("user{n}.{}@loadgen.example.org", &tag[..12]))
            .unwrap_or_else(|_| unreachable!("a generated address is valid"));
        Self {
            n,
            rng,
            email,
            account: None,
            account_created: false,
            subscription: None,
            profiles: Vec::new(),
            scenarios: 0,
            flow: None,
            edits: 0,
        }
    }

    fn new_flow(&mut self, signin: bool) -> Flow {
        let now = now_ms();
        let code = format!("{:06}", self.rng.below(1_000_000));
        let signup = PendingSignup {
            id: self.rng.uuid(),
            cosmos_id: None,
            email: self.email.clone(),
            display_name: format!("{} {}", self.rng.pick(&NAMES), self.n),
            code: Some(SignupCode::parse(&code).unwrap_or_else(|_| unreachable!("six digits"))),
            magic_link: None,
            created_at: now,
            expires_at: now + chrono::Duration::minutes(15),
            is_used: false,
            is_signin: signin,
            failed_attempts: 0,
        };
        Flow {
            signup,
            code,
            created: false,
            wrong_left: if self.rng.chance(0.3) {
                1 + self.rng.below(2) as u32
            } else {
                0
            },
            verified: false,
        }
    }

    fn new_account(&mut self, display_name: String) -> Account {
        let now = now_ms();
        let id = self.rng.uuid();
        Account {
            id,
            cosmos_id: None,
            auth0_user_id: Some(format!("auth0|{}", id.simple())),
            email: self.email.clone(),
            display_name,
            role: Role::User,
            settings: AccountSettings::default(),
            created_at: now,
            last_login_at: now,
        }
    }

    fn new_profile(&mut self, account: Uuid) -> Profile {
        let now = now_ms();
        let age = self.rng.pick(&AGE_GROUPS);
        let profile = UserProfile {
            id: self.rng.uuid(),
            cosmos_id: None,
            account_id: Some(account),
            name: self.rng.pick(&NAMES).to_owned(),
            age_group: AgeGroup::parse(age).unwrap_or_default(),
            date_of_birth: None,
            is_guest: false,
            is_npc: false,
            pronouns: None,
            bio: None,
            avatar_media_id: None,
            selected_avatar_media_id: None,
            preferred_themes: vec![self.rng.pick(&THEMES).to_owned()],
            has_completed_onboarding: false,
            created_at: now,
            updated_at: now,
        };
        Profile {
            profile,
            created: false,
            badges: 0,
        }
    }

    /// What this user does next.
    fn next_step(&mut self) -> Step {
        if let Some(f) = &self.flow {
            return if !f.created {
                Step::SignupCreate
            } else if !f.verified && f.wrong_left > 0 {
                Step::VerifyWrong
            } else if !f.verified {
                Step::VerifyRight
            } else {
                Step::MarkUsed
            };
        }
        let Some(account) = &self.account else {
            self.flow = Some(self.new_flow(false));
            return Step::SignupCreate;
        };
        let account_id = account.id;
        if !self.account_created {
            return Step::AccountCreate;
        }
        if self.profiles.is_empty() {
            let p = self.new_profile(account_id);
            self.profiles.push(p);
        }
        if let Some(i) = self.profiles.iter().position(|p| !p.created) {
            return Step::ProfileCreate(i);
        }
        let profile = self.rng.below(self.profiles.len() as u64) as usize;
        match self.rng.below(100) {
            0..25 => Step::Login,
            25..37 => Step::ProfileUpdate(profile),
            37..45 => Step::Onboard(profile),
            45..60 => Step::Badge(profile),
            60..75 => Step::Scenario,
            75..85 => Step::Subscription,
            85..91 => Step::AccountUpdate,
            91..96 => {
                self.flow = Some(self.new_flow(true));
                Step::SignupCreate
            }
            _ if self.profiles.len() < 4 => {
                let p = self.new_profile(account_id);
                self.profiles.push(p);
                Step::ProfileCreate(self.profiles.len() - 1)
            }
            _ => Step::Login,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    SignupCreate,
    VerifyWrong,
    VerifyRight,
    MarkUsed,
    AccountCreate,
    ProfileCreate(usize),
    Login,
    ProfileUpdate(usize),
    Onboard(usize),
    Badge(usize),
    Scenario,
    Subscription,
    AccountUpdate,
}

// ---------------------------------------------------------------------------------------------
// one call

fn error_class(e: &RepoError) -> &'static str {
    match e {
        RepoError::Unavailable(_) => "unavailable",
        RepoError::Invalid(_) => "invalid",
        RepoError::Conflict { .. } => "conflict",
        _ => "store",
    }
}

#[derive(Debug, Default)]
struct Tally {
    latencies: BTreeMap<(&'static str, Phase), (Vec<Duration>, u64)>,
    errors: BTreeMap<String, u64>,
    calls: u64,
    acked: u64,
    failed: u64,
    unrecorded: u64,
}

/// Everything a call needs (shared by every task).
struct Ctx {
    router: DualWriteRouter,
    ledger: LedgerWriter,
    tally: Mutex<Tally>,
    /// The first ledger write that failed: once set, no call is started.
    ledger_failure: Mutex<Option<LedgerError>>,
    /// Wakes the run's loop when the ledger failed.
    stop: tokio::sync::Notify,
}

/// The aggregate a call writes and the phase lookup the router makes for it.
struct Target {
    container: &'static str,
    key: Uuid,
    account: Option<Uuid>,
}

/// How a call ended, for the user's state.
enum Ended<T> {
    /// Ok, and recorded as acknowledged.
    Acked(T),
    /// Ok, but not what the flow expected (nothing recorded as acknowledged).
    Unexpected,
    Failed(RepoError),
    /// The ledger failed: the call was not made (its intent could not be written, or the run
    /// is stopping), or it was made and its acknowledgement could not be written.
    Stopped,
}

impl Ctx {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<LedgerError>> {
        self.ledger_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn ledger_failed(&self) -> bool {
        self.failure().is_some()
    }

    /// Keeps the first ledger failure and stops the run.
    fn fail(&self, e: LedgerError) {
        let mut first = self.failure();
        if first.is_none() {
            tracing::error!(error = %e, "a ledger write failed: stopping the run");
            *first = Some(e);
        }
        drop(first);
        self.stop.notify_one();
    }

    /// Makes one call: intent, the call, then (when acknowledged) its ack; counts and times it.
    /// `groups` is what the call leaves if it lands (`None`: it writes nothing checkable); the
    /// acknowledged groups are what `judge` derives from the answer.
    async fn call<T, F>(
        &self,
        op: &'static str,
        target: Target,
        groups: Option<Groups>,
        fut: F,
        judge: impl FnOnce(&T) -> Option<Groups>,
    ) -> Ended<T>
    where
        F: Future<Output = RepoResult<T>>,
    {
        if self.ledger_failed() {
            return Ended::Stopped;
        }
        let intent = match groups {
            Some(g) => match self.ledger.intent(op, target.container, target.key, g) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    // without its intent the call must not be made: it could land unrecorded
                    self.fail(e);
                    return Ended::Stopped;
                }
            },
            None => None,
        };
        let phase = self.router.phase_for(target.account);
        let started = Instant::now();
        let result = fut.await;
        let elapsed = started.elapsed();
        let phase_after = self.router.phase_for(target.account);
        let ended = match result {
            Ok(v) => match judge(&v) {
                Some(acked) => match intent {
                    Some(call) => match self.ledger.ack(
                        call,
                        phase,
                        phase_after,
                        op,
                        target.container,
                        target.key,
                        acked,
                    ) {
                        Ok(()) => Ended::Acked(v),
                        Err(e) => {
                            self.fail(e);
                            Ended::Stopped
                        }
                    },
                    None => Ended::Acked(v),
                },
                None => Ended::Unexpected,
            },
            Err(e) => Ended::Failed(e),
        };
        let mut t = self.tally();
        t.calls += 1;
        let entry = t.latencies.entry((op, phase)).or_default();
        match &ended {
            Ended::Acked(..) => {
                entry.0.push(elapsed);
                t.acked += 1;
            }
            Ended::Unexpected => {
                entry.1 += 1;
                t.failed += 1;
                *t.errors.entry("unexpected".into()).or_default() += 1;
            }
            Ended::Failed(e) => {
                entry.1 += 1;
                t.failed += 1;
                *t.errors.entry(error_class(e).into()).or_default() += 1;
            }
            // made (an intent came before it), acknowledged, but not recorded as such
            Ended::Stopped => t.unrecorded += 1,
        }
        ended
    }
}

fn account_target(account: Uuid) -> Target {
    Target {
        container: "Accounts",
        key: account,
        account: Some(account),
    }
}

fn profile_target(profile: Uuid, account: Option<Uuid>) -> Target {
    Target {
        container: "UserProfiles",
        key: profile,
        account,
    }
}

fn signup_target(signup: Uuid) -> Target {
    Target {
        container: "PendingSignups",
        key: signup,
        account: None,
    }
}

fn is_duplicate_id(e: &RepoError) -> bool {
    matches!(
        e,
        RepoError::Conflict {
            kind: ConflictKind::DuplicateId,
            ..
        }
    )
}

/// Runs the user's next step and updates the user from its outcome.
async fn step(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    match user.next_step() {
        Step::SignupCreate => {
            let Some(flow) = user.flow.as_mut() else {
                return;
            };
            let s = flow.signup.clone();
            let g = FieldGroups::signup(&s);
            match ctx
                .call(
                    "signup.create",
                    signup_target(s.id),
                    Some(g.clone()),
                    PendingSignupRepository::create(r, &s),
                    |_| Some(g),
                )
                .await
            {
                Ended::Acked(..) => flow.created = true,
                _ => user.flow = None,
            }
        }
        Step::VerifyWrong => {
            let Some(flow) = user.flow.as_mut() else {
                return;
            };
            let id = flow.signup.id;
            let wrong = if flow.code == "000000" {
                "111111"
            } else {
                "000000"
            };
            let expected = FieldGroups::attempts(id, flow.signup.failed_attempts + 1);
            let lockout = PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS;
            let ended = ctx
                .call(
                    "signup.verify_wrong",
                    signup_target(id),
                    Some(expected),
                    PendingSignupRepository::verify_code(
                        r,
                        &flow.signup.email,
                        wrong,
                        Utc::now(),
                        lockout,
                    ),
                    |o| match o {
                        VerifyOutcome::WrongCode { attempts_left } => {
                            Some(FieldGroups::attempts(id, lockout - attempts_left))
                        }
                        _ => None,
                    },
                )
                .await;
            match ended {
                Ended::Acked(VerifyOutcome::WrongCode { attempts_left }) => {
                    flow.signup.failed_attempts = lockout - attempts_left;
                    flow.wrong_left -= 1;
                }
                // an unknown count: this sign-up is abandoned, a new one will be requested
                _ => user.flow = None,
            }
        }
        Step::VerifyRight => {
            let Some(flow) = user.flow.as_mut() else {
                return;
            };
            let id = flow.signup.id;
            let ended = ctx
                .call(
                    "signup.verify",
                    signup_target(id),
                    None,
                    PendingSignupRepository::verify_code(
                        r,
                        &flow.signup.email,
                        &flow.code,
                        Utc::now(),
                        PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS,
                    ),
                    |o| matches!(o, VerifyOutcome::Verified(s) if s.id == id).then(Groups::new),
                )
                .await;
            match ended {
                Ended::Acked(..) => flow.verified = true,
                _ => user.flow = None,
            }
        }
        Step::MarkUsed => {
            let Some(flow) = user.flow.take() else { return };
            let id = flow.signup.id;
            let g = FieldGroups::used(id, true);
            let ended = ctx
                .call(
                    "signup.mark_used",
                    signup_target(id),
                    Some(g.clone()),
                    PendingSignupRepository::mark_used(r, id),
                    |found| found.then_some(g),
                )
                .await;
            if let Ended::Acked(..) = ended {
                if user.account.is_none() {
                    let a = user.new_account(flow.signup.display_name.clone());
                    user.account = Some(a);
                } else if user.account_created {
                    // a sign-in ends in a login
                    login(ctx, user).await;
                }
            }
        }
        Step::AccountCreate => {
            let Some(a) = user.account.clone() else {
                return;
            };
            let g = FieldGroups::account(&a);
            match ctx
                .call(
                    "account.create",
                    account_target(a.id),
                    Some(g.clone()),
                    AccountRepository::create(r, &a),
                    |_| Some(g),
                )
                .await
            {
                Ended::Acked(..) => user.account_created = true,
                // a retry of a create that had landed
                Ended::Failed(e) if is_duplicate_id(&e) => user.account_created = true,
                _ => {}
            }
        }
        Step::ProfileCreate(i) => {
            let p = user.profiles[i].profile.clone();
            let g = FieldGroups::profile(&p);
            match ctx
                .call(
                    "profile.create",
                    profile_target(p.id, p.account_id),
                    Some(g.clone()),
                    ProfileRepository::create(r, &p),
                    |_| Some(g),
                )
                .await
            {
                Ended::Acked(..) => user.profiles[i].created = true,
                Ended::Failed(e) if is_duplicate_id(&e) => user.profiles[i].created = true,
                _ => {}
            }
        }
        Step::Login => login(ctx, user).await,
        Step::ProfileUpdate(i) => {
            user.edits += 1;
            let mut p = user.profiles[i].profile.clone();
            p.name = format!("{} {}", user.rng.pick(&NAMES), user.edits);
            p.bio = Some(format!("likes {}", user.rng.pick(&THEMES).to_lowercase()));
            p.preferred_themes = vec![user.rng.pick(&THEMES).to_owned()];
            let g = FieldGroups::profile(&p);
            if let Ended::Acked(..) = ctx
                .call(
                    "profile.update",
                    profile_target(p.id, None),
                    Some(g.clone()),
                    ProfileRepository::update(r, &p),
                    |found| found.then_some(g),
                )
                .await
            {
                user.profiles[i].profile = p;
            }
        }
        Step::Onboard(i) => {
            let id = user.profiles[i].profile.id;
            let g = FieldGroups::onboarded(id, true);
            if let Ended::Acked(..) = ctx
                .call(
                    "profile.onboard",
                    profile_target(id, None),
                    Some(g.clone()),
                    ProfileRepository::mark_onboarded(r, id),
                    |found| found.then_some(g),
                )
                .await
            {
                user.profiles[i].profile.has_completed_onboarding = true;
            }
        }
        Step::Badge(i) => {
            user.profiles[i].badges += 1;
            let n = user.profiles[i].badges;
            let axis = ["courage", "kindness", "wisdom"][n as usize % 3];
            let badge = UserBadge {
                id: user.rng.uuid(),
                cosmos_id: None,
                user_profile_id: user.profiles[i].profile.id,
                badge_configuration_id: format!("badge-{axis}-{n}"),
                badge_id: None,
                badge_name: format!("{axis} {n}"),
                badge_message: String::new(),
                axis: axis.to_owned(),
                trigger_value: 1.0,
                threshold: 0.5,
                earned_at: now_ms(),
                game_session_id: None,
                scenario_id: None,
                image_id: String::new(),
            };
            ctx.call(
                "badge.award",
                profile_target(badge.user_profile_id, None),
                Some(FieldGroups::badge(&badge)),
                BadgeRepository::award(r, &badge),
                |o| match o {
                    AwardOutcome::Awarded(b) | AwardOutcome::AlreadyHeld(b) => {
                        Some(FieldGroups::badge(b))
                    }
                },
            )
            .await;
        }
        Step::Scenario => {
            let Some(account) = user.account.as_ref().map(|a| a.id) else {
                return;
            };
            user.scenarios += 1;
            let scenario = format!("scenario-{:04}", user.scenarios);
            let g = FieldGroups::completion(account, &scenario);
            ctx.call(
                "scenario.complete",
                account_target(account),
                Some(g.clone()),
                CompletedScenarioRepository::mark_completed(r, account, &scenario, now_ms()),
                |_| Some(g),
            )
            .await;
        }
        Step::Subscription => {
            let Some(account) = user.account.as_ref().map(|a| a.id) else {
                return;
            };
            let now = now_ms();
            let kinds = [
                SubscriptionType::Monthly,
                SubscriptionType::Annual,
                SubscriptionType::Free,
            ];
            let kind = kinds[user.rng.below(3) as usize];
            let s = Subscription {
                id: user
                    .subscription
                    .as_ref()
                    .map_or_else(|| user.rng.uuid(), |s| s.id),
                cosmos_id: None,
                account_id: account,
                subscription_type: kind,
                product_id: Some(format!("{}-plan", kind.as_str().to_lowercase())),
                tier: user.rng.pick(&TIERS).to_owned(),
                is_active: kind != SubscriptionType::Free,
                valid_until: Some(now + chrono::Duration::days(30)),
                start_date: Some(now),
                end_date: None,
                purchase_token: None,
                last_verified: None,
                purchased_scenarios: Vec::new(),
                created_at: now,
                updated_at: now,
            };
            let g = FieldGroups::subscription(&s);
            if let Ended::Acked(stored) = ctx
                .call(
                    "subscription.upsert",
                    account_target(account),
                    Some(g.clone()),
                    SubscriptionRepository::upsert_for_account(r, &s),
                    |_| Some(g),
                )
                .await
            {
                user.subscription = Some(stored);
            }
        }
        Step::AccountUpdate => {
            let Some(mut a) = user.account.clone() else {
                return;
            };
            user.edits += 1;
            a.display_name = format!("{} {}", user.rng.pick(&NAMES), user.edits);
            a.settings.theme = user.rng.pick(&["light", "dark", "system"]).to_owned();
            let g = FieldGroups::account(&a);
            if let Ended::Acked(..) = ctx
                .call(
                    "account.update",
                    account_target(a.id),
                    Some(g.clone()),
                    AccountRepository::update(r, &a),
                    |found| found.then_some(g),
                )
                .await
            {
                user.account = Some(a);
            }
        }
    }
}

async fn login(ctx: &Ctx, user: &mut User) {
    let Some(a) = user.account.as_mut() else {
        return;
    };
    // strictly later than the last login: a later login never looks older
    let at = now_ms().max(a.last_login_at + chrono::Duration::milliseconds(1));
    let g = FieldGroups::login(a.id, at);
    if let Ended::Acked(..) = ctx
        .call(
            "account.login",
            account_target(a.id),
            Some(g.clone()),
            AccountRepository::record_login(&ctx.router, a.id, at),
            |found| found.then_some(g),
        )
        .await
    {
        a.last_login_at = at;
    }
}

// ---------------------------------------------------------------------------------------------
// the run

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Drives `router` as `config` says until `duration` passes or `stop` resolves, then waits
/// (at most `settle_timeout`) for the calls in flight, fsyncs the ledger and reports. The first
/// ledger write that fails stops the run the same way, and the result is then
/// [`LoadError::LedgerWrite`] (see the module docs). Host [`mystira_dual_write::router::run_background`]
/// beside it: the journal and outbox it fills are drained there.
pub async fn run_load(
    router: &DualWriteRouter,
    config: &LoadConfig,
    stop: impl Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(LoadError::BadRate);
    }
    let ledger = LedgerWriter::open(&config.ledger, config.seed)?;
    let run = ledger.run();
    let ctx = Arc::new(Ctx {
        router: router.clone(),
        ledger: ledger.clone(),
        tally: Mutex::new(Tally::default()),
        ledger_failure: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
    });
    let concurrency = config.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<User>();
    let mut idle: Vec<User> = Vec::new();
    let mut rng = Rng::new(config.seed, run << 40 | 0xff_ffff_ffff);
    let mut users = 0u64;
    let mut over_concurrency = 0u64;

    let syncer = {
        let ctx = ctx.clone();
        let every = config.sync_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = ctx.ledger.sync() {
                    ctx.fail(e);
                    return;
                }
            }
        })
    };

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.duration;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    // open loop: ticks missed while the runtime was busy are made up at once
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            // a failed ledger write stops the run before any other branch starts a call
            biased;
            _ = ctx.stop.notified() => break,
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(deadline) => break,
            Some(user) = done_rx.recv() => idle.push(user),
            _ = ticks.tick() => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    over_concurrency += 1;
                    continue;
                };
                // a steady population: new users arrive now and then, and whenever every
                // known user is busy
                let mut user = if idle.len() < concurrency || rng.chance(0.04) {
                    users += 1;
                    User::new(config.seed, run, users)
                } else {
                    let i = rng.below(idle.len() as u64) as usize;
                    idle.swap_remove(i)
                };
                let ctx = ctx.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    step(&ctx, &mut user).await;
                    drop(permit);
                    let _ = done.send(user);
                });
            }
        }
    }
    let elapsed = started.elapsed();
    // the calls in flight finish (bounded): their outcome belongs in the ledger
    let settled = tokio::time::timeout(
        config.settle_timeout,
        permits.acquire_many(concurrency as u32),
    )
    .await;
    let abandoned = match settled {
        Ok(_) => 0,
        Err(_) => (concurrency - permits.available_permits()) as u64,
    };
    syncer.abort();
    let failure = ctx.failure().take();
    let failure = match failure {
        Some(e) => Some(e),
        None => ledger.sync().err(),
    };

    let tally = std::mem::take(&mut *ctx.tally());
    let per_op = tally
        .latencies
        .into_iter()
        .map(|((op, phase), (mut ok, failed))| {
            ok.sort_unstable();
            OpStats {
                op,
                phase,
                calls: ok.len() as u64 + failed,
                ok: ok.len() as u64,
                failed,
                p50_ms: percentile(&ok, 0.50),
                p99_ms: percentile(&ok, 0.99),
            }
        })
        .collect();
    let report = LoadReport {
        run,
        seed: config.seed,
        elapsed_seconds: elapsed.as_secs_f64(),
        target_rate: config.rate,
        achieved_rate: tally.calls as f64 / elapsed.as_secs_f64().max(1e-9),
        calls: tally.calls,
        acknowledged: tally.acked,
        failed: tally.failed,
        unrecorded: tally.unrecorded,
        errors: tally.errors,
        over_concurrency,
        abandoned,
        users,
        ledger_lines: ledger.lines(),
        per_op,
        router: router.stats(),
    };
    match failure {
        Some(source) => Err(LoadError::LedgerWrite {
            source,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_run_give_the_same_users() {
        let a = User::new(7, 1, 3);
        let b = User::new(7, 1, 3);
        assert_eq!(a.email, b.email);
        let c = User::new(7, 2, 3);
        assert_ne!(a.email, c.email, "a new run must bring new users");
    }

    #[test]
    fn neighbouring_users_share_no_ids() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..200 {
            let mut r = Rng::new(1, (1 << 40) ^ n);
            for _ in 0..50 {
                assert!(seen.insert(r.uuid()), "two users drew the same id");
            }
        }
    }

    #[test]
    fn a_new_user_signs_up_first() {
        let mut u = User::new(1, 1, 1);
        assert!(matches!(u.next_step(), Step::SignupCreate));
        assert!(u.flow.is_some());
    }
}
