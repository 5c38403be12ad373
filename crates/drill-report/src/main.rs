//! `drill-report DIR`: the report of a `scripts/drill` run, from what the drill recorded in DIR
//! (`events.jsonl`: steps, faults, statuses; `samples.jsonl`: `status --json` every second;
//! `http.jsonl`: one line per HTTP call of the load; `ledger.jsonl` and `ledger-check*.json`;
//! `loadgen.json`). Writes `summary.json`, `report.md` and five PNG plots (the phase, write
//! latency, error rate, journal and outbox depth, replication lag), each with the faults marked.
//!
//! A binary of its own, so that `mystira-users` does not carry a plotting library: plotters with
//! its bitmap backend and PNG encoder only; text through `ab_glyph` with a TrueType font found
//! on the machine (`MYSTIRA_DRILL_FONT`, else DejaVu Sans or Liberation Sans where Debian
//! installs them). See docs/drill.md.

mod markdown;
mod plot;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

use markdown::report_md;
use plot::{plot, register_font, step_line};

/// Width of a time bucket of the latency and error plots, in seconds.
const BUCKET: f64 = 2.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [dir] if dir != "-h" && dir != "--help" => PathBuf::from(dir),
        _ => {
            eprintln!(
                "usage: drill-report DIR\nrenders summary.json, report.md and PNG plots from \
                 what scripts/drill recorded in DIR"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&dir) {
        eprintln!("drill-report: error: {e:#}");
        std::process::exit(1);
    }
}

/// A fault or a step, in seconds since the drill began.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    start: f64,
    end: f64,
}

fn run(dir: &Path) -> anyhow::Result<()> {
    register_font()?;
    let events = read_lines(&dir.join("events.jsonl"))?;
    if events.is_empty() {
        bail!("{} holds no event", dir.join("events.jsonl").display());
    }
    let samples = read_lines(&dir.join("samples.jsonl")).unwrap_or_default();
    let http = read_lines(&dir.join("http.jsonl")).unwrap_or_default();
    let drill = events.iter().find(|e| e["kind"] == "drill").cloned();
    let t0 = drill
        .as_ref()
        .and_then(|d| d["start"].as_f64())
        .or_else(|| {
            events
                .iter()
                .filter_map(|e| e["start"].as_f64())
                .reduce(f64::min)
        })
        .unwrap_or(0.0);
    let t_end = drill
        .as_ref()
        .and_then(|d| d["end"].as_f64())
        .or_else(|| {
            events
                .iter()
                .filter_map(|e| e["end"].as_f64())
                .reduce(f64::max)
        })
        .unwrap_or(t0);

    let faults: Vec<Span> = events
        .iter()
        .filter(|e| e["kind"] == "fault")
        .map(|e| Span {
            name: e["name"].as_str().unwrap_or("?").to_owned(),
            start: e["start"].as_f64().unwrap_or(t0) - t0,
            end: e["end"].as_f64().unwrap_or(t0) - t0,
        })
        .collect();
    // each step with the attention codes of the status read right after it
    let mut steps_with_status: Vec<(&Value, Option<&Value>)> = Vec::new();
    for e in &events {
        if e["kind"] == "step" {
            steps_with_status.push((e, None));
        } else if e["kind"] == "status"
            && let Some(last) = steps_with_status.last_mut()
            && last.0["name"] == e["after"]
        {
            last.1 = Some(&e["attention"]);
        }
    }
    let steps: Vec<Value> = steps_with_status
        .iter()
        .map(|&(e, attention)| {
            let start = e["start"].as_f64().unwrap_or(t0);
            let end = e["end"].as_f64().unwrap_or(start);
            let outcome = if e["skipped"] == true {
                "skipped".to_owned()
            } else if e["background"] == true {
                "started".to_owned()
            } else {
                match e["exit"].as_i64() {
                    Some(0) => "ok".to_owned(),
                    Some(code) => format!("exit {code}"),
                    None => "unknown".to_owned(),
                }
            };
            json!({
                "name": e["name"], "command": e["command"],
                "at_seconds": round1(start - t0), "duration_seconds": round1(end - start),
                "outcome": outcome,
                "attention_after": attention.cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let x_max = (t_end - t0).max(1.0);

    // the ledger checks: against the drill's Cosmos database and the restored one
    let check = read_json(&dir.join("ledger-check.json"));
    let restored = read_json(&dir.join("ledger-check-restored.json"));
    let count = |v: &Option<Value>, field: &str| {
        v.as_ref()
            .and_then(|v| v[field].as_array().map(|a| a.len()))
            .map_or(Value::Null, |n| json!(n))
    };

    // the HTTP load: latency per bucket (successful calls), error rate per bucket
    let mut buckets: BTreeMap<i64, (Vec<f64>, u64, u64, u64)> = BTreeMap::new();
    let (mut http_ok, mut http_failed, mut failovers) = (0u64, 0u64, 0u64);
    let mut all_ms = Vec::new();
    for h in &http {
        let (Some(t), Some(ms)) = (h["t"].as_f64(), h["ms"].as_f64()) else {
            continue;
        };
        let b = buckets
            .entry(((t - t0) / BUCKET).floor() as i64)
            .or_default();
        let status = h["status"].as_u64().unwrap_or(0);
        if h["failover"] == true {
            failovers += 1;
            b.3 += 1;
        }
        if (200..300).contains(&status) {
            b.0.push(ms);
            all_ms.push(ms);
            http_ok += 1;
        } else {
            b.2 += 1;
            http_failed += 1;
        }
        b.1 += 1;
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut http_errors = Vec::new();
    let mut http_failovers = Vec::new();
    for (b, (ms, calls, failed, failed_over)) in &mut buckets {
        let x = (*b as f64 + 0.5) * BUCKET;
        if !ms.is_empty() {
            ms.sort_by(f64::total_cmp);
            p50.push((x, quantile(ms, 0.50)));
            p99.push((x, quantile(ms, 0.99)));
        }
        http_errors.push((x, 100.0 * *failed as f64 / (*calls).max(1) as f64));
        http_failovers.push((x, 100.0 * *failed_over as f64 / (*calls).max(1) as f64));
    }
    all_ms.sort_by(f64::total_cmp);

    // the ledger's load: calls (intents) and acknowledgements per bucket; an intent carries no
    // time, so it is placed at the time of the last timed line before it
    let ledger_errors = ledger_error_rate(&dir.join("ledger.jsonl"), t0)?;

    // status samples
    let mut phase = Vec::new();
    let mut journal = Vec::new();
    let mut outbox = Vec::new();
    let mut lag = Vec::new();
    let mut unreadable = Vec::new();
    for s in &samples {
        let Some(t) = s["t"].as_f64() else { continue };
        let x = t - t0;
        if s["ok"] != true {
            unreadable.push(x);
            continue;
        }
        if let Some(p) = s["phase"].as_str().and_then(phase_number) {
            phase.push((x, p));
        }
        let table = s["journal_table"].as_f64().unwrap_or(0.0);
        let files = s["journal_files"].as_f64().unwrap_or(0.0);
        journal.push((x, table + files));
        outbox.push((x, s["outbox"].as_f64().unwrap_or(0.0)));
        if let Some(l) = s["lag"].as_f64() {
            lag.push((x, l));
        }
    }

    let passed = drill.as_ref().and_then(|d| d["failed_steps"].as_u64()) == Some(0)
        && check.as_ref().is_some_and(|c| c["passed"] == true);
    let loadgen = read_json(&dir.join("loadgen.json"));
    let summary = json!({
        "passed": passed,
        "short": drill.as_ref().map(|d| d["short"].clone()),
        "duration_seconds": round1(t_end - t0),
        "acknowledged": check.as_ref().map(|c| c["acks"].clone()),
        "lost": count(&check, "lost"),
        "duplicated": count(&check, "duplicates"),
        "ledger_check_passed": check.as_ref().map(|c| c["passed"].clone()),
        "ledger": check.as_ref().map(|c| json!({
            "intents": c["intents"], "unacknowledged": c["unacknowledged"],
            "promises_checked": c["promises_checked"], "drained": c["drained"],
        })),
        "restored": {
            "acknowledged": restored.as_ref().map(|c| c["acks"].clone()),
            "lost": count(&restored, "lost"),
            "duplicated": count(&restored, "duplicates"),
            "ledger_check_passed": restored.as_ref().map(|c| c["passed"].clone()),
        },
        "failed_steps": drill.as_ref().map(|d| d["failed_steps"].clone()),
        "steps": steps,
        "faults": faults.iter().map(|f| json!({
            "name": f.name, "at_seconds": round1(f.start),
            "duration_seconds": round1(f.end - f.start),
        })).collect::<Vec<_>>(),
        "http": {
            "calls": http_ok + http_failed, "ok": http_ok, "failed": http_failed,
            "failovers": failovers,
            "p50_ms": (!all_ms.is_empty()).then(|| round1(quantile(&all_ms, 0.50))),
            "p99_ms": (!all_ms.is_empty()).then(|| round1(quantile(&all_ms, 0.99))),
        },
        "loadgen": loadgen.as_ref().map(|l| json!({
            "calls": l["report"]["calls"], "acknowledged": l["report"]["acknowledged"],
            "failed": l["report"]["failed"], "errors": l["report"]["errors"],
            "achieved_rate": l["report"]["achieved_rate"],
            // latency of each operation in each phase (successful calls)
            "per_op": l["report"]["per_op"],
        })),
        "status_unreadable_samples": unreadable.len(),
        "plots": ["phase.png", "latency.png", "errors.png", "queues.png", "lag.png"],
    });
    fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )
    .context("cannot write summary.json")?;

    plot(
        &dir.join("phase.png"),
        "migration phase (0 cosmos-only .. 3 postgres-only)",
        "phase",
        x_max,
        Some(3.5),
        &faults,
        &[("phase", BLUE, step_line(&phase))],
    )?;
    plot(
        &dir.join("latency.png"),
        "HTTP write latency (PATCH /v1/accounts/{id}, successful calls)",
        "ms",
        x_max,
        None,
        &faults,
        &[("p50", BLUE, p50), ("p99", RED, p99)],
    )?;
    plot(
        &dir.join("errors.png"),
        "failed calls (% of calls started)",
        "%",
        x_max,
        Some(105.0),
        &faults,
        &[
            ("HTTP load: failed", RED, http_errors),
            (
                "HTTP load: refused, then served by the other replica",
                RGBColor(230, 140, 0),
                http_failovers,
            ),
            ("loadgen (ledger)", MAGENTA, ledger_errors),
        ],
    )?;
    plot(
        &dir.join("queues.png"),
        "retry journal (table + local files) and outbox depth",
        "entries",
        x_max,
        None,
        &faults,
        &[("journal", BLUE, journal), ("outbox", RED, outbox)],
    )?;
    plot(
        &dir.join("lag.png"),
        "replication lag (largest over the containers)",
        "seconds",
        x_max,
        None,
        &faults,
        &[("lag", BLUE, lag)],
    )?;
    fs::write(dir.join("report.md"), report_md(&summary)).context("cannot write report.md")?;
    println!(
        "{}: {}",
        dir.join("report.md").display(),
        if passed { "passed" } else { "FAILED" }
    );
    Ok(())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // a line cut short by a kill is skipped: the rest of the file still counts
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn phase_number(name: &str) -> Option<f64> {
    Some(match name {
        "cosmos-only" => 0.0,
        "dual-write-cosmos-read" => 1.0,
        "dual-write-postgres-read" => 2.0,
        "postgres-only" => 3.0,
        _ => return None,
    })
}

/// Failed calls of the ledger's load, in % per bucket: an intent without an acknowledgement.
fn ledger_error_rate(path: &Path, t0: f64) -> anyhow::Result<Vec<(f64, f64)>> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut intent_at: BTreeMap<u64, f64> = BTreeMap::new();
    let mut acked = std::collections::BTreeSet::new();
    let mut last = t0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(at) = v["at"].as_str()
            && let Ok(t) = chrono_free_parse(at)
        {
            last = t;
        }
        match v["kind"].as_str() {
            Some("intent") => {
                if let Some(seq) = v["seq"].as_u64() {
                    intent_at.insert(seq, last);
                }
            }
            Some("ack") => {
                if let Some(call) = v["call"].as_u64() {
                    acked.insert(call);
                }
            }
            _ => {}
        }
    }
    let mut buckets: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for (seq, t) in &intent_at {
        let b = buckets
            .entry(((t - t0) / BUCKET).floor() as i64)
            .or_default();
        b.0 += 1;
        if !acked.contains(seq) {
            b.1 += 1;
        }
    }
    Ok(buckets
        .into_iter()
        .map(|(b, (calls, failed))| {
            (
                (b as f64 + 0.5) * BUCKET,
                100.0 * failed as f64 / calls.max(1) as f64,
            )
        })
        .collect())
}

/// Seconds since the epoch of an RFC 3339 UTC time as the ledger writes it
/// (`2026-12-07T08:19:32.163171Z`), without a date library.
fn chrono_free_parse(s: &str) -> Result<f64, ()> {
    let s = s.strip_suffix('Z').ok_or(())?;
    let (date, time) = s.split_once('T').ok_or(())?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().map_err(|_| ()));
    let (y, m, day) = (
        d.next().ok_or(())??,
        d.next().ok_or(())??,
        d.next().ok_or(())??,
    );
    let mut t = time.split(':');
    let h: f64 = t.next().ok_or(())?.parse().map_err(|_| ())?;
    let min: f64 = t.next().ok_or(())?.parse().map_err(|_| ())?;
    let sec: f64 = t.next().ok_or(())?.parse().map_err(|_| ())?;
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drill directory as scripts/drill leaves it, in small: two steps (one refused, then
    /// passed), a fault, two status samples (one unreadable), three HTTP calls and both checks.
    #[test]
    fn a_drill_directory_becomes_a_summary_a_report_and_plots() {
        let dir = std::env::temp_dir().join(format!("drill-report-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        write(
            "events.jsonl",
            r#"{"kind":"step","name":"phase-3","command":"mystira-users phase set postgres-only","start":100.0,"end":100.5,"exit":3}
{"kind":"status","after":"phase-3","t":100.6,"exit":3,"attention":["outbox_backlog"]}
{"kind":"step","name":"phase-3","command":"mystira-users phase set postgres-only","start":102.0,"end":102.2,"exit":0}
{"kind":"status","after":"phase-3","t":102.3,"exit":0,"attention":[]}
{"kind":"fault","name":"postgres-stopped","start":101.0,"end":111.0}
{"kind":"drill","start":100.0,"end":130.0,"failed_steps":0,"short":true}
"#,
        );
        write(
            "samples.jsonl",
            r#"{"t":101.0,"ok":true,"phase":"dual-write-postgres-read","journal_table":0,"journal_files":3,"outbox":2,"lag":1.5}
{"t":105.0,"ok":false,"phase":null}
"#,
        );
        write(
            "http.jsonl",
            r#"{"t":101.0,"ms":10.0,"status":200,"replica":0,"failover":false}
{"t":101.5,"ms":30.0,"status":200,"replica":1,"failover":true}
{"t":102.0,"ms":5.0,"status":503,"replica":0,"failover":false}
"#,
        );
        write(
            "ledger-check.json",
            r#"{"acks":7,"passed":true,"drained":true,"lost":[],"duplicates":[]}"#,
        );
        write(
            "ledger-check-restored.json",
            r#"{"acks":7,"passed":false,"lost":[{"key":"k"}],"duplicates":[]}"#,
        );

        run(&dir).unwrap_or_else(|e| panic!("{e:#}"));

        let summary: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary["passed"], true);
        assert_eq!(summary["acknowledged"], 7);
        assert_eq!(summary["lost"], 0);
        assert_eq!(summary["duplicated"], 0);
        assert_eq!(summary["restored"]["lost"], 1);
        assert_eq!(summary["duration_seconds"], 30.0);
        assert_eq!(summary["steps"][0]["outcome"], "exit 3");
        assert_eq!(
            summary["steps"][0]["attention_after"],
            json!(["outbox_backlog"])
        );
        assert_eq!(summary["steps"][1]["outcome"], "ok");
        assert_eq!(summary["steps"][1]["at_seconds"], 2.0);
        assert_eq!(summary["faults"][0]["at_seconds"], 1.0);
        assert_eq!(summary["faults"][0]["duration_seconds"], 10.0);
        assert_eq!(summary["http"]["calls"], 3);
        assert_eq!(summary["http"]["failed"], 1);
        assert_eq!(summary["http"]["failovers"], 1);
        assert_eq!(summary["status_unreadable_samples"], 1);
        let report = fs::read_to_string(dir.join("report.md")).unwrap_or_default();
        assert!(
            report.contains("| postgres-stopped | 1.0 | 10.0 |"),
            "{report}"
        );
        assert!(report.contains("outbox_backlog"), "{report}");
        for plot in ["phase", "latency", "errors", "queues", "lag"] {
            let bytes = fs::read(dir.join(format!("{plot}.png"))).unwrap_or_default();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2_000,
                "{plot}.png is not a drawn PNG ({} bytes)",
                bytes.len()
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_the_ledger_times() {
        assert_eq!(chrono_free_parse("1970-01-01T00:00:00Z"), Ok(0.0));
        assert_eq!(
            chrono_free_parse("2026-12-07T08:19:32.5Z"),
            Ok(1_796_631_572.5)
        );
        assert!(chrono_free_parse("yesterday").is_err());
    }
}
