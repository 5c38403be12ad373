//! `bench`'s report: each measure's median and spread over the runs, the ratios of each run's
//! own pairing, the peak memory; as text for a terminal and as JSON.

use serde_json::json;

use super::stats::Spread;
use super::{BenchReport, RunSample};
use crate::copy_baseline::SEND_BUFFER_BYTES;

/// The report of `runs`: every measure's median and spread, the ratios per run pairing, the
/// peak memory, and the memory at each of `memory`'s sizes; as text and as JSON.
pub(super) fn report(
    accounts: u64,
    streams: usize,
    runs: &[RunSample],
    memory: Vec<serde_json::Value>,
) -> BenchReport {
    let rows = runs.first().map_or(0, |r| r.rows);
    let per_second = |s: f64| rows as f64 / s;
    let seconds = |f: fn(&RunSample) -> f64| Spread::of(runs.iter().map(f));
    let migrate = seconds(|r| r.migrate_seconds);
    let initial = seconds(|r| r.initial_seconds);
    let verify = seconds(|r| r.verify_seconds);
    let full = seconds(|r| r.full_schema_seconds);
    let restore = seconds(RunSample::restore_seconds);
    let restore_copy = seconds(|r| r.restore_copy_seconds);
    let restore_rebuild = seconds(|r| r.restore_rebuild_seconds);
    // ratios per run pairing: each run's migration against the baselines of the same run, so a
    // slow moment of the machine weighs on both sides of one ratio rather than on one side
    let ratio = |f: fn(&RunSample) -> f64| Spread::of(runs.iter().map(f));
    let over_full = ratio(|r| r.full_schema_seconds / r.migrate_seconds);
    let over_restore = ratio(|r| r.restore_seconds() / r.migrate_seconds);
    let verify_ratio = ratio(|r| r.verify_seconds / r.migrate_seconds);
    let initial_over_full = ratio(|r| r.full_schema_seconds / r.initial_seconds);
    let initial_over_restore = ratio(|r| r.restore_seconds() / r.initial_seconds);
    let verify_over_initial = ratio(|r| r.verify_seconds / r.initial_seconds);
    let peak_of = |f: fn(&RunSample) -> Option<u64>| {
        let peaks: Vec<u64> = runs.iter().filter_map(f).collect();
        (!peaks.is_empty()).then(|| Spread::of(peaks.iter().map(|&b| b as f64)))
    };
    let peak = peak_of(|r| r.peak_rss);
    let initial_peak = peak_of(|r| r.initial_peak_rss);

    let mib = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    let line = |name: &str, s: Spread| {
        let r = s.map(per_second);
        format!(
            "{name:<38} {:>9.0} rows/s ({:.0} .. {:.0})  {:>7.1} s ({:.1} .. {:.1})\n",
            r.median, r.min, r.max, s.median, s.min, s.max
        )
    };
    let ratio_line = |name: &str, s: Spread| {
        format!(
            "{name:<38} {:>9.2} ({:.2} .. {:.2})\n",
            s.median, s.min, s.max
        )
    };
    let mut human = format!(
        "data set: {} accounts, {rows} rows in the six tables; {} runs in fresh databases, \
         {streams} parallel streams (= migrate's workers)\n\
         median (min .. max) over the runs\n",
        accounts,
        runs.len(),
    );
    if runs.len() < 3 {
        human.push_str("warning: fewer than 3 runs, the spread says little\n");
    }
    human.push_str(&line("migrate, upsert path", migrate));
    human.push_str(&line("migrate, initial load", initial));
    human.push_str(&line("COPY, full schema", full));
    human.push_str(&line("COPY, restore order (COPY + rebuild)", restore));
    human.push_str(&format!(
        "{:<38} COPY {:.1} s ({:.1} .. {:.1}) + rebuild {:.1} s ({:.1} .. {:.1})\n",
        "",
        restore_copy.median,
        restore_copy.min,
        restore_copy.max,
        restore_rebuild.median,
        restore_rebuild.min,
        restore_rebuild.max
    ));
    human.push_str(&line("verify (same data, clean)", verify));
    human.push_str("ratios, each run's own pairing, then median (min .. max):\n");
    human.push_str(&ratio_line(
        "  migrate / full-schema COPY (rows/s)",
        over_full,
    ));
    human.push_str(&ratio_line(
        "  migrate / restore order (rows/s)",
        over_restore,
    ));
    human.push_str(&ratio_line(
        "  initial load / full-schema COPY",
        initial_over_full,
    ));
    human.push_str(&ratio_line(
        "  initial load / restore order",
        initial_over_restore,
    ));
    human.push_str(&ratio_line("  verify / migrate (time)", verify_ratio));
    human.push_str(&ratio_line(
        "  verify / initial load (time)",
        verify_over_initial,
    ));
    for (name, peak) in [("upsert path", peak), ("initial load", initial_peak)] {
        match peak {
            Some(p) => human.push_str(&format!(
                "{name} peak memory: {} ({} .. {})\n",
                mib(p.median),
                mib(p.min),
                mib(p.max)
            )),
            None => human.push_str(&format!("{name} peak memory: unknown on this system\n")),
        }
    }
    for m in &memory {
        human.push_str(&format!(
            "memory at {} accounts ({} rows): peak {}\n",
            m["accounts"],
            m["rows"],
            m["peak_rss_bytes"]
                .as_f64()
                .map_or_else(|| "?".to_owned(), mib)
        ));
    }
    let measure = |s: Spread| json!({ "seconds": s, "rows_per_second": s.map(per_second) });
    BenchReport {
        human,
        json: json!({
            "accounts": accounts,
            "rows": rows,
            "runs": runs.len(),
            "streams": streams,
            "send_buffer_bytes": SEND_BUFFER_BYTES,
            "migrate": measure(migrate),
            "initial_load": measure(initial),
            "full_schema_copy": measure(full),
            "restore_order": {
                "seconds": restore,
                "rows_per_second": restore.map(per_second),
                "copy_seconds": restore_copy,
                "rebuild_seconds": restore_rebuild,
            },
            "verify": measure(verify),
            "ratios": {
                "pairing": "per run",
                "migrate_over_full_schema_copy": over_full,
                "migrate_over_restore_order": over_restore,
                "verify_over_migrate": verify_ratio,
                "initial_load_over_full_schema_copy": initial_over_full,
                "initial_load_over_restore_order": initial_over_restore,
                "verify_over_initial_load": verify_over_initial,
            },
            "peak_rss_bytes": peak,
            "initial_load_peak_rss_bytes": initial_peak,
            "samples": runs.iter().map(|r| json!({
                "migrate_seconds": r.migrate_seconds,
                "peak_rss_bytes": r.peak_rss,
                "initial_load_seconds": r.initial_seconds,
                "initial_load_peak_rss_bytes": r.initial_peak_rss,
                "verify_seconds": r.verify_seconds,
                "full_schema_copy_seconds": r.full_schema_seconds,
                "restore_order_copy_seconds": r.restore_copy_seconds,
                "restore_order_rebuild_seconds": r.restore_rebuild_seconds,
            })).collect::<Vec<_>>(),
            "memory": memory,
        }),
    }
}
