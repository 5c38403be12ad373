//! `scripts/drill` runs the runbook's commands in the runbook's words: every runbook step of the
//! drill (a `step`, `must`, `wait_ok` or `bg` line naming `mystira-users ...`) must appear as a
//! code span in docs/runbook.md (whitespace folded, so a command the runbook wraps over two
//! lines still counts), and the drill must cover the runbook's sequence from the backfill to the
//! restore. A runbook edit that renames a command, or a drill edit that runs something the
//! runbook does not say, fails here.

use std::path::Path;

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Whitespace runs folded into one space.
fn fold(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The runbook commands of the drill, as written (quotes kept), with their line numbers.
fn drill_commands(script: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in script.lines().enumerate() {
        let code = line.split(" # ").next().unwrap_or("");
        if code.trim_start().starts_with('#') {
            continue;
        }
        for part in code.split("||").flat_map(|p| p.split("&&")) {
            let part = part
                .trim()
                .trim_start_matches('{')
                .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ';' | '}' | '\\'));
            // an environment assignment before the helper (`COSMOS_DATABASE=x step ...`)
            let words: Vec<&str> = part
                .split_whitespace()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'))
                .collect();
            let skip = match words.first() {
                Some(&"step" | &"must" | &"bg") => 2,
                Some(&"wait_ok") => 3,
                _ => continue,
            };
            if words.len() <= skip {
                continue; // the helper's own definition or a bare call
            }
            let command = words[skip..].join(" ");
            assert!(
                command.starts_with("mystira-users "),
                "scripts/drill line {}: a runbook step that is not a mystira-users command: {}",
                n + 1,
                part
            );
            out.push((n + 1, command));
        }
    }
    out
}

#[test]
fn every_drill_step_is_a_runbook_command_in_its_words() {
    let runbook = fold(&read("docs/runbook.md"));
    let script = read("scripts/drill");
    let commands = drill_commands(&script);
    assert!(
        commands.len() >= 15,
        "too few runbook steps found in scripts/drill ({}): the extraction is broken",
        commands.len()
    );
    let missing: Vec<String> = commands
        .iter()
        .filter(|(_, c)| !runbook.contains(&format!("`{c}")))
        .map(|(n, c)| format!("line {n}: {c}"))
        .collect();
    assert!(
        missing.is_empty(),
        "drill commands not in docs/runbook.md as written:\n{}",
        missing.join("\n")
    );

    // the runbook's sequence, in order: backfill, verify, phase 1, phase 2, rollback to 1,
    // phase 2 again, phase 3, archive, archive verify, restore
    let sequence = [
        "mystira-users migrate",
        "mystira-users phase set dual-write-cosmos-read --reason \"backfill complete\"",
        "mystira-users verify",
        "mystira-users phase set dual-write-postgres-read --reason \"verified clean\"",
        "mystira-users phase set dual-write-cosmos-read --reason \"...\" --wait-drain 120",
        "mystira-users phase set dual-write-postgres-read --reason \"verified clean\"",
        "mystira-users relay --drain",
        "mystira-users verify --direction pg-to-cosmos",
        "mystira-users phase set postgres-only --reason \"cutover after a week in phase 2\"",
        "mystira-users archive --out DIR",
        "mystira-users archive verify DIR",
        "mystira-users restore DIR --cosmos-database NAME",
    ];
    let mut from = 0;
    for wanted in sequence {
        let at = commands[from..]
            .iter()
            .position(|(_, c)| c == wanted)
            .unwrap_or_else(|| {
                panic!(
                    "scripts/drill does not run `{wanted}` after line {}",
                    commands[from].0
                )
            });
        from += at + 1;
        if from >= commands.len() {
            from = commands.len() - 1;
        }
    }
}

#[test]
fn the_extraction_sees_each_helper_and_rejects_a_foreign_command() {
    let script = "step a mystira-users verify || wait_ok 60 b mystira-users verify --repair\n\
                  # step c mystira-users not-a-command\n\
                  X=\"$y\" bg relay mystira-users relay\n\
                  must d mystira-users archive --out DIR  # comment\n\
                  { wait_ok 60 e mystira-users journal status; }\n";
    let found: Vec<String> = drill_commands(script).into_iter().map(|c| c.1).collect();
    assert_eq!(
        found,
        [
            "mystira-users verify",
            "mystira-users verify --repair",
            "mystira-users relay",
            "mystira-users archive --out DIR",
            "mystira-users journal status"
        ]
    );
    let foreign = std::panic::catch_unwind(|| drill_commands("step x curl http://x\n"));
    assert!(foreign.is_err(), "a non-mystira-users step was accepted");
}
