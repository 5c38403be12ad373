//! `report.md`: the drill's summary (`summary.json`) as Markdown for a reader.

use serde_json::Value;

pub(crate) fn report_md(s: &Value) -> String {
    let v = |x: &Value| match x {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "# Drill report\n\n{} drill of docs/runbook.md under load and faults \
         (scripts/drill, see docs/drill.md): **{}** in {} s.\n\n",
        if s["short"] == true {
            "A short"
        } else {
            "A full"
        },
        if s["passed"] == true {
            "passed"
        } else {
            "FAILED"
        },
        v(&s["duration_seconds"]),
    ));
    out.push_str("| | drill database | restored database |\n|---|---|---|\n");
    for (label, field) in [
        ("acknowledged writes (ledger)", "acknowledged"),
        ("lost", "lost"),
        ("duplicated", "duplicated"),
        ("ledger check passed", "ledger_check_passed"),
    ] {
        out.push_str(&format!(
            "| {label} | {} | {} |\n",
            v(&s[field]),
            v(&s["restored"][field])
        ));
    }
    let h = &s["http"];
    out.push_str(&format!(
        "\nHTTP load on the two `serve` replicas: {} calls, {} failed, {} failed over to the other \
         replica; latency p50 {} ms, p99 {} ms.\n",
        v(&h["calls"]),
        v(&h["failed"]),
        v(&h["failovers"]),
        v(&h["p50_ms"]),
        v(&h["p99_ms"])
    ));
    if let Some(l) = s["loadgen"].as_object() {
        out.push_str(&format!(
            "`loadgen` (the ledger's load): {} calls, {} acknowledged, {} failed (errors: {}).\n",
            v(&l["calls"]),
            v(&l["acknowledged"]),
            v(&l["failed"]),
            v(&l["errors"])
        ));
    }
    out.push_str("\n## Faults\n\n| fault | at (s) | lasted (s) |\n|---|---|---|\n");
    for f in s["faults"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            v(&f["name"]),
            v(&f["at_seconds"]),
            v(&f["duration_seconds"])
        ));
    }
    out.push_str(
        "\n## Steps\n\nEach is the runbook's command in its words (`DIR`: the archive, `NAME`: \
         the restored database).\n\n| step | command | at (s) | took (s) | outcome | status attention after it |\n\
         |---|---|---|---|---|---|\n",
    );
    for st in s["steps"].as_array().into_iter().flatten() {
        let attention = match st["attention_after"].as_array() {
            Some(codes) if codes.is_empty() => "none".to_owned(),
            Some(codes) => codes.iter().map(v).collect::<Vec<_>>().join(", "),
            None => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {attention} |\n",
            v(&st["name"]),
            v(&st["command"]),
            v(&st["at_seconds"]),
            v(&st["duration_seconds"]),
            v(&st["outcome"])
        ));
    }
    out.push_str("\n## Plots\n\n");
    for p in s["plots"].as_array().into_iter().flatten() {
        let p = v(p);
        out.push_str(&format!("![{p}]({p})\n\n"));
    }
    out
}
