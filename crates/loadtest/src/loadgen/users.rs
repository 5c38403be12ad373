//! The simulated users: their sign-up and sign-in flows, accounts and profiles, and the step
//! each takes next.

use mystira_domain::{
    Account, AccountSettings, AgeGroup, Email, PendingSignup, Role, SignupCode, Subscription,
    UserProfile,
};
use uuid::Uuid;

use super::rng::{Rng, now_ms};

pub(super) const NAMES: [&str; 8] = ["Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Ivy"];
pub(super) const THEMES: [&str; 5] = ["Classic Fantasy", "Space", "Mystery", "Animals", "Pirates"];
pub(super) const AGE_GROUPS: [&str; 4] = ["3-5", "6-9", "10-12", "13-18"];
pub(super) const TIERS: [&str; 3] = ["Basic", "Plus", "Family"];

#[derive(Debug)]
pub(super) struct Flow {
    pub(super) signup: PendingSignup,
    pub(super) code: String,
    pub(super) created: bool,
    pub(super) wrong_left: u32,
    pub(super) verified: bool,
}

#[derive(Debug)]
pub(super) struct Profile {
    pub(super) profile: UserProfile,
    pub(super) created: bool,
    pub(super) badges: u32,
}

#[derive(Debug)]
pub(super) struct User {
    pub(super) n: u64,
    pub(super) rng: Rng,
    pub(super) email: Email,
    pub(super) account: Option<Account>,
    pub(super) account_created: bool,
    pub(super) subscription: Option<Subscription>,
    pub(super) profiles: Vec<Profile>,
    pub(super) scenarios: u32,
    pub(super) flow: Option<Flow>,
    pub(super) edits: u32,
}

impl User {
    pub(super) fn new(seed: u64, run: u64, n: u64) -> Self {
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

    pub(super) fn new_flow(&mut self, signin: bool) -> Flow {
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

    pub(super) fn new_account(&mut self, display_name: String) -> Account {
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

    pub(super) fn new_profile(&mut self, account: Uuid) -> Profile {
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
    pub(super) fn next_step(&mut self) -> Step {
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
pub(super) enum Step {
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
