//! `deploy/compose.yaml` against the binary, without Docker (the CI machine has no daemon, so
//! the file is never run there): every `mystira-users` command a service runs exists and takes
//! the flags it is given, every environment variable set for those containers is one the
//! binary reads, several `serve` replicas share one PostgreSQL, and every file the services
//! mount or build from is in the repository.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");
/// The image the Dockerfile at the repository's root builds (its entrypoint is the binary).
const IMAGE: &str = "mystira-users:dev";

fn deploy_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy")).to_path_buf()
}

/// compose.yaml with its `<<` merge keys applied, as Compose reads it.
fn compose() -> Value {
    let text = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap();
    let mut compose: Value = serde_norway::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    compose
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The `mystira-users` invocations of a service of the image: its command (the image's
/// entrypoint is the binary), or each `mystira-users` line of a `/bin/sh -c` script, up to the
/// first shell operator or redirection.
fn invocations(service: &Value) -> Vec<Vec<String>> {
    let entrypoint = strings(&service["entrypoint"]);
    let command = strings(&service["command"]);
    if entrypoint.is_empty() {
        return vec![command];
    }
    assert_eq!(entrypoint[0], "/bin/sh", "an entrypoint other than sh");
    let script = command.first().expect("sh without a script");
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mystira-users "))
        .map(|line| {
            line.split_whitespace()
                .take_while(|w| !w.starts_with(['>', '<', '|', '&', ';']))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// `mystira-users <words> --help`, which fails for a command that does not exist.
fn help(words: &[String]) -> String {
    let out = Command::new(BIN)
        .args(words)
        .arg("--help")
        .env_remove("MYSTIRA_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`mystira-users {} --help` failed: {}",
        words.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The words of a help text (flags, `[env: NAME=]` names).
fn words(help: &str) -> BTreeSet<&str> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_command_flag_and_variable_compose_passes_exists() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let ours: BTreeMap<&str, &Value> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some(IMAGE))
        .map(|(name, s)| (name.as_str().unwrap(), s))
        .collect();
    let mut helps = String::new();
    let mut serving = Vec::new();
    for (name, service) in &ours {
        for argv in invocations(service) {
            let command: Vec<String> = argv
                .iter()
                .take_while(|w| !w.starts_with('-'))
                .cloned()
                .collect();
            assert!(!command.is_empty(), "{name}: no command");
            let text = help(&command);
            let known = words(&text);
            for flag in argv.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    known.contains(flag),
                    "{name}: `mystira-users {}` has no {flag}",
                    command.join(" ")
                );
            }
            if command == ["serve"] {
                serving.push(service["environment"]["DATABASE_URL"].clone());
            }
            helps.push_str(&text);
        }
    }
    assert!(
        ours.len() >= 5,
        "setup, two serve, replicate, relay: {:?}",
        ours.keys()
    );
    for needed in ["serve", "replicate", "relay"] {
        assert!(
            ours.values()
                .any(|s| strings(&s["command"]).first().map(String::as_str) == Some(needed)),
            "no service runs {needed}"
        );
    }
    // several replicas, one PostgreSQL (the compose service), no other coordination
    assert!(serving.len() >= 2, "{serving:?}");
    assert!(serving.iter().all(|url| *url == serving[0]), "{serving:?}");
    let url = serving[0].as_str().unwrap();
    assert!(url.contains("@postgres:5432/"), "{url}");
    assert!(services.contains_key("postgres"));

    helps.push_str(&help(&[]));
    let read = words(&helps);
    for (name, service) in &ours {
        for (variable, _) in service["environment"].as_mapping().unwrap() {
            let variable = variable.as_str().unwrap();
            // read by the Cosmos SDK (its only way to trust an extra certificate), not by a flag
            if variable == "SSL_CERT_FILE" {
                continue;
            }
            assert!(
                read.contains(variable),
                "{name}: {variable} is read by none of the commands compose runs"
            );
        }
    }
}

#[test]
fn every_file_compose_mounts_or_builds_from_is_in_the_repository() {
    let compose = compose();
    let deploy = deploy_dir();
    let mut checked = 0;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if let Some(context) = service["build"]["context"].as_str() {
            assert!(
                deploy.join(context).join("Dockerfile").is_file(),
                "{name}: no Dockerfile in {context}"
            );
            checked += 1;
        }
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(deploy.join(source).exists(), "{name}: {source} is missing");
                checked += 1;
            }
        }
        for dependency in service["depends_on"]
            .as_mapping()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_else(|| {
                service["depends_on"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
        {
            assert!(
                compose["services"].get(&dependency).is_some(),
                "{name} depends on {dependency:?}, which is not a service"
            );
        }
    }
    assert!(checked >= 6, "{checked}");
    let dockerfile = std::fs::read_to_string(deploy.join("../Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["mystira-users"]"#),
        "compose's commands are arguments to the binary"
    );
}
