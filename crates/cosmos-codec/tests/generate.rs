//! The synthetic data set: deterministic, every shape present, every document decodes to what
//! its kind says.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::fs;

use mystira_cosmos_codec::codec::{Container, Decoded, decode, document_ref};
use mystira_cosmos_codec::export::ExportDir;
use mystira_cosmos_codec::generate::{
    DocKind, Expected, GenerateOptions, Problem, documents_of, write_export,
};

fn opts(accounts: u64, seed: u64, dirty: f64) -> GenerateOptions {
    GenerateOptions {
        accounts,
        seed,
        dirty,
    }
}

fn files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_gives_byte_identical_files_and_another_seed_does_not() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let sa = write_export(a.path(), &opts(300, 7, 0.05)).unwrap();
    let sb = write_export(b.path(), &opts(300, 7, 0.05)).unwrap();
    write_export(c.path(), &opts(300, 8, 0.05)).unwrap();
    assert_eq!(sa, sb);
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 4, "three containers and the manifest");
    assert_eq!(fa, fb);
    for name in [
        "Accounts.jsonl",
        "UserProfiles.jsonl",
        "PendingSignups.jsonl",
    ] {
        assert_ne!(fa[name], fc[name], "{name}");
    }
    // The files are a valid export whose manifest agrees with the summary.
    let export = ExportDir::open(a.path()).unwrap();
    export.verify().unwrap();
    for c in Container::ALL {
        let lines = sa.manifest.files[&format!("{}.jsonl", c.name())].lines;
        assert_eq!(lines, sa.documents[&c]);
    }
    assert!(sa.documents[&Container::Accounts] >= 300);
}

#[test]
fn every_document_decodes_as_its_kind_says() {
    let options = opts(2000, 11, 0.05);
    let docs: Vec<_> = documents_of(&options).collect();
    let account_keys: HashSet<_> = docs
        .iter()
        .filter(|d| {
            d.container == Container::Accounts && d.kind != DocKind::Problem(Problem::ForeignType)
        })
        .map(|d| document_ref(Container::Accounts, &d.value).unwrap().key)
        .collect();
    assert_eq!(account_keys.len(), 2000, "one distinct key per account");

    let mut seen_kinds: BTreeMap<DocKind, u64> = BTreeMap::new();
    for doc in &docs {
        *seen_kinds.entry(doc.kind).or_default() += 1;
        let result = decode(doc.container, &doc.value);
        let context = format!(
            "{:?} in {}: {:?}",
            doc.kind,
            doc.container,
            result.as_ref().err()
        );
        match doc.kind.expected() {
            Expected::Rejected(code) => {
                assert_eq!(
                    result.as_ref().err().map(|e| e.code),
                    Some(code),
                    "{context}"
                );
            }
            Expected::Decodes | Expected::Note(_) | Expected::DecodesWithMissingAccount => {
                let decoded = result.as_ref().expect(&context);
                let notes: Vec<_> = decoded.notes().iter().map(|n| n.code).collect();
                match doc.kind.expected() {
                    Expected::Note(code) => assert!(notes.contains(&code), "{context} {notes:?}"),
                    _ => assert!(
                        notes.iter().all(|n| [
                            "age_group_mapped",
                            "user_profile_ids_dropped",
                            // clean documents spell 5% of subscription types by name
                            "subscription_type_spelled",
                        ]
                        .contains(n)),
                        "{context} {notes:?}"
                    ),
                }
                if let Decoded::Profile(p) = decoded {
                    let resolves = p
                        .profile
                        .account_id
                        .is_some_and(|k| account_keys.contains(&k));
                    let orphan = doc.kind.expected() == Expected::DecodesWithMissingAccount;
                    assert_eq!(resolves, !orphan, "{context}");
                    assert!(p.badges.iter().all(|b| b.user_profile_id == p.profile.id));
                }
            }
        }
    }

    // Every problem and the magic-link version are present.
    for c in Container::ALL {
        for p in Problem::for_container(c) {
            assert!(
                seen_kinds.contains_key(&DocKind::Problem(*p)),
                "{p:?} missing"
            );
        }
    }
    assert!(seen_kinds[&DocKind::MagicLinkSignup] > 0);
    let signups = docs
        .iter()
        .filter(|d| d.container == Container::PendingSignups)
        .count();
    assert!(
        (120..=300).contains(&signups),
        "about N/10 sign-ups, got {signups}"
    );

    // The dirty share is roughly what was asked.
    let dirty = docs.iter().filter(|d| d.kind.is_dirty()).count() as f64;
    let share = dirty / docs.len() as f64;
    assert!((0.035..=0.065).contains(&share), "dirty share {share}");
}

#[test]
fn every_historical_shape_is_present() {
    let docs: Vec<_> = documents_of(&opts(1000, 3, 0.0)).collect();
    assert!(
        docs.iter()
            .all(|d| d.kind != DocKind::Problem(Problem::ForeignType))
    );
    let accounts: Vec<_> = docs
        .iter()
        .filter(|d| d.container == Container::Accounts)
        .map(|d| &d.value)
        .collect();
    let count =
        |pred: &dyn Fn(&serde_json::Value) -> bool| accounts.iter().filter(|v| pred(v)).count();
    assert!(count(&|v| v.get("$type").is_some()) > 0);
    assert!(count(&|v| v.get("Discriminator").is_some()) > 0);
    assert!(count(&|v| v.get("$type").is_none() && v.get("Discriminator").is_none()) > 0);
    assert!(
        count(&|v| v["id"].as_str().unwrap().starts_with("Account|") && v.get("Id").is_some()) > 0
    );
    assert!(count(&|v| v.get("Auth0UserId").is_some()) > 0);
    assert!(count(&|v| v.get("ExternalUserId").is_some()) > 0);
    assert!(
        count(&|v| v.get("ExternalUserId").or(v.get("Auth0UserId")) == Some(&serde_json::json!("")))
            > 0
    );
    assert!(
        count(&|v| v["id"].as_str().unwrap().len() == 26) > 0,
        "26-char hex ids"
    );
    assert!(
        count(&|v| {
            let id = v["id"].as_str().unwrap();
            id.len() == 36 && id.chars().any(|c| c.is_ascii_uppercase())
        }) > 0,
        "upper-case GUIDs"
    );
    assert!(count(&|v| v["Subscription"].is_object() && v["Subscription"].get("Id").is_none()) > 0);
    assert!(count(&|v| v["Settings"].get("Id").is_none()) > 0);
    assert!(count(&|v| v["Subscription"]["EndDate"] == "9999-12-31T23:59:59.9999999") > 0);
    assert!(
        count(&|v| !v["CreatedAt"].as_str().unwrap().ends_with('Z')) > 0,
        "offset-less"
    );
    assert!(count(&|v| v["Subscription"]["Type"].is_string()) > 0);
    for code in 0..5 {
        assert!(
            count(&|v| v["Subscription"]["Type"] == code) > 0,
            "type {code}"
        );
    }
    for v in &accounts {
        let email = v["Email"].as_str().unwrap();
        assert!(
            email.to_lowercase().contains("@example.")
                || email.to_lowercase().contains(".example."),
            "fake emails only"
        );
        for f in ["_rid", "_self", "_etag", "_attachments", "_ts"] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }
    let legacy_age = docs
        .iter()
        .filter(|d| d.container == Container::UserProfiles)
        .filter(|d| {
            d.value["AgeGroupName"]
                .as_str()
                .unwrap()
                .chars()
                .any(|c| c.is_ascii_alphabetic())
        })
        .count();
    assert!(legacy_age > 0);
}
