//! The sign-up codes against guessing (issue 30, item 5), in-process against a real PostgreSQL
//! (one fresh database per test), each request from a client address of the test's choosing:
//! the guess budget per email across sign-ups and client addresses, IPv6 clients bucketed by
//! /64, a superseded code that never verifies again, and the requester of the newest code
//! still able to finish after other clients spent everything they may.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::{StatusCode, header};
use mystira_server::RateLimit;
use serde_json::{Value, json};
use sqlx::PgPool;

const EMAIL: &str = "victim@example.com";

mod support;
use support::{Api, Reply};

impl Reply {
    /// A refusal: problem+json with a stable code.
    fn refused(&self, status: StatusCode, code: &str) -> bool {
        self.status == status
            && self.code() == code
            && self.content_type() == "application/problem+json"
    }
}

/// What these tests ask of the application: requests from a client address of their choosing.
impl Api {
    async fn post(&self, from: &str, uri: &str, body: Value) -> Reply {
        let ip: IpAddr = from.parse().unwrap();
        self.call_from(
            Some(SocketAddr::new(ip, 40000)),
            "POST",
            uri,
            None,
            Some(body),
        )
        .await
    }

    /// Asks for a code for `email` from `from`; the code mailed.
    async fn ask(&self, from: &str, email: &str) -> String {
        let reply = self
            .post(
                from,
                "/v1/signups",
                json!({"email": email, "display_name": "V"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        let text = std::fs::read_to_string(&self.mail).unwrap();
        let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(line["to"], email);
        line["code"].as_str().unwrap().to_owned()
    }

    async fn guess(&self, from: &str, email: &str, code: &str) -> Reply {
        self.post(
            from,
            "/v1/signups/verify",
            json!({"email": email, "code": code}),
        )
        .await
    }
}

/// A code that is not `code`.
fn other_than(code: &str) -> &'static str {
    if code == "000000" { "111111" } else { "000000" }
}

/// Client `n` of a block of IPv4 addresses, all distinct.
fn v4(n: usize) -> String {
    format!("198.51.100.{}", n + 1)
}

fn count(replies: &[Reply], status: StatusCode, code: &str) -> usize {
    replies.iter().filter(|r| r.refused(status, code)).count()
}

fn wrong_codes(replies: &[Reply]) -> usize {
    replies
        .iter()
        .filter(|r| r.status == StatusCode::BAD_REQUEST && r.code() == "wrong_code")
        .count()
}

/// 30 wrong guesses from 30 addresses over 3 sign-ups of one email: 10 are compared, the rest
/// are refused 429 `too_many_guesses` with a Retry-After; concurrent guesses never overspend.
/// Before the fix each sign-up took 5 (15 compared here, 25 an hour with 5 sign-ups).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn guesses_are_bounded_per_email_across_signups_and_client_addresses(pool: PgPool) {
    let api = Api::new(pool.clone());
    // the requester asks from one /64 and guesses from five other addresses of it
    let requester = |n: usize| format!("2001:db8:aa:1::{}", n + 1);
    let mut replies = Vec::new();
    let mut code = String::new();
    for signup in 0..3 {
        code = api.ask(&requester(0), EMAIL).await;
        let wrong = other_than(&code);
        if signup < 2 {
            // ten clients at once against this sign-up
            let clients: Vec<String> = (0..10).map(|n| v4(signup * 10 + n)).collect();
            replies.extend(
                futures::future::join_all(clients.iter().map(|c| api.guess(c, EMAIL, wrong))).await,
            );
        } else {
            for n in 0..5 {
                replies.push(api.guess(&v4(20 + n), EMAIL, wrong).await);
            }
            for n in 1..=5 {
                replies.push(api.guess(&requester(n), EMAIL, wrong).await);
            }
        }
    }
    assert_eq!(replies.len(), 30);
    let compared = wrong_codes(&replies);
    let refused = count(&replies, StatusCode::TOO_MANY_REQUESTS, "too_many_guesses");
    assert_eq!(
        (compared, refused),
        (10, 20),
        "{:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    let limited = replies
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    let wait: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    // the budget is spent for everyone now, the requester's own share included
    let after = api.guess(&requester(9), EMAIL, &code).await;
    assert!(after.refused(StatusCode::LOCKED, "locked_out"), "{after:?}");
    let stranger = api.guess(&v4(99), EMAIL, &code).await;
    assert!(
        stranger.refused(StatusCode::TOO_MANY_REQUESTS, "too_many_guesses"),
        "{stranger:?}"
    );
    // the state is in PostgreSQL (every replica's), with no email or address in clear
    let rows: Vec<String> =
        sqlx::query_scalar("select row_to_json(g)::text from service.signup_guesses g")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    for clear in ["example.com", "victim", "2001:db8", "198.51.100"] {
        assert!(!rows[0].contains(clear), "{clear} in {}", rows[0]);
    }
}

/// The per-client budget buckets an IPv6 client by its /64 (any address in it costs nothing),
/// an IPv4 client by its address, and an IPv4-mapped IPv6 address as its IPv4 address.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn ipv6_addresses_of_one_64_share_a_client_budget(pool: PgPool) {
    let api = Api::tuned(pool, |s| {
        s.per_client = RateLimit {
            max: 3,
            window: Duration::from_secs(600),
        };
    });
    let ask = |from: &'static str, n: usize| {
        api.post(
            from,
            "/v1/signups",
            json!({"email": format!("u{n}@example.com"), "display_name": "N"}),
        )
    };
    for (n, from) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(ask(from, n).await.status, StatusCode::ACCEPTED, "{from}");
    }
    let fourth = ask("2001:db8:1:2::abcd", 3).await;
    assert!(
        fourth.refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "another address of the /64: {fourth:?}"
    );
    // the next /64 is another client
    assert_eq!(ask("2001:db8:1:3::1", 4).await.status, StatusCode::ACCEPTED);
    // verifications too: the guesses of one /64 share its budget
    for n in 0..3 {
        let from = format!("2001:db8:2:7::{}", n + 1);
        let r = api.guess(&from, "nobody@example.com", "123456").await;
        assert!(
            r.refused(StatusCode::NOT_FOUND, "no_pending_signup"),
            "{r:?}"
        );
    }
    let r = api
        .guess("2001:db8:2:7:1:2:3:4", "nobody@example.com", "123456")
        .await;
    assert!(
        r.refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{r:?}"
    );
    // an IPv4 client seen through a dual-stack listener is its IPv4 address
    for n in 0..3 {
        assert_eq!(ask("192.0.2.50", 10 + n).await.status, StatusCode::ACCEPTED);
    }
    let mapped = ask("::ffff:192.0.2.50", 13).await;
    assert!(
        mapped.refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{mapped:?}"
    );
}

/// A code superseded by a newer sign-up of the same email never verifies, not even once the
/// newest has been used (before the fix it did: the older sign-up was the newest unused one).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_superseded_code_is_refused_after_the_newest_is_used(pool: PgPool) {
    let api = Api::new(pool.clone());
    let client = "203.0.113.7";
    let old = api.ask(client, EMAIL).await;
    let mut new = api.ask(client, EMAIL).await;
    while new == old {
        // one chance in a million: a third sign-up, which supersedes the second too
        new = api.ask(client, EMAIL).await;
    }
    let early = api.guess(client, EMAIL, &old).await;
    assert!(
        early.refused(StatusCode::BAD_REQUEST, "wrong_code"),
        "{early:?}"
    );
    let done = api.guess(client, EMAIL, &new).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let late = api.guess(client, EMAIL, &old).await;
    assert!(
        late.refused(StatusCode::NOT_FOUND, "no_pending_signup"),
        "the superseded code: {late:?}"
    );
    // only the completed sign-up is used: a superseded one is dead without being marked used,
    // which would make it look completed (a proof of the address)
    let used: Vec<bool> =
        sqlx::query_scalar("select is_used from pending_signups order by created_at, id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(used.iter().filter(|u| **u).count(), 1, "{used:?}");
    assert_eq!(used.last(), Some(&true), "{used:?}");
}

/// Other clients guessing wrong until they are refused cannot lock the requester of the
/// newest code out of it: it still finishes with its code, after typing it wrong once.
/// Before the fix five wrong guesses from anyone locked the sign-up (423 for the victim).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_victim_finishes_with_the_newest_code_after_others_spent_the_budget(pool: PgPool) {
    let api = Api::new(pool);
    let victim = "203.0.113.7";
    let code = api.ask(victim, EMAIL).await;
    let wrong = other_than(&code);
    let clients: Vec<String> = (0..30).map(v4).collect();
    let replies =
        futures::future::join_all(clients.iter().map(|c| api.guess(c, EMAIL, wrong))).await;
    let typo = api.guess(victim, EMAIL, wrong).await;
    assert!(
        typo.refused(StatusCode::BAD_REQUEST, "wrong_code"),
        "the victim's typo is compared: {typo:?}"
    );
    assert_eq!(typo.body["attempts_left"], 4, "{typo:?}");
    let done = api.guess(victim, EMAIL, &code).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    // what the others had: the budget less the victim's share, then 429
    assert_eq!(wrong_codes(&replies), 5, "the others' part of the budget");
    assert_eq!(
        count(&replies, StatusCode::TOO_MANY_REQUESTS, "too_many_guesses"),
        25
    );
}

/// The guess state is bounded: rows whose window and code have ended are deleted as new rows
/// come.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn ended_guess_state_is_swept(pool: PgPool) {
    let api = Api::new(pool.clone());
    sqlx::query(
        "insert into service.signup_guesses (email_hash, window_start, expires_at)
         select 'old' || n, now() - interval '2 hours', now() - interval '1 hour'
         from generate_series(1, 15) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    api.ask("203.0.113.7", EMAIL).await;
    let left: Vec<String> = sqlx::query_scalar("select email_hash from service.signup_guesses")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].starts_with("old"));
}
