//! `mystira-users generate`: a deterministic synthetic data set as export files.

use anyhow::Context as _;
use mystira_cosmos::generate::{GenerateOptions, write_export};
use serde_json::json;

use super::Outcome;
use crate::cli::GenerateArgs;
use crate::config::ConfigError;
use crate::exit::Exit;

pub fn run(args: &GenerateArgs) -> anyhow::Result<Outcome> {
    if !(0.0..=1.0).contains(&args.dirty) {
        anyhow::bail!(ConfigError::Usage(
            "--dirty must be between 0.0 and 1.0".into()
        ));
    }
    let started = std::time::Instant::now();
    let options = GenerateOptions {
        accounts: args.accounts,
        seed: args.seed,
        dirty: args.dirty,
    };
    let summary = write_export(&args.out, &options)
        .with_context(|| format!("cannot write the data set to {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let per_container: serde_json::Map<String, serde_json::Value> = summary
        .documents
        .iter()
        .map(|(c, n)| (c.name().to_owned(), json!(n)))
        .collect();
    let mut human = format!(
        "wrote {} documents ({} with a planted problem) for {} accounts to {} in {seconds:.1} s\n",
        summary.total_documents,
        summary.dirty_documents,
        args.accounts,
        args.out.display()
    );
    for (container, n) in &summary.documents {
        human.push_str(&format!("  {:<15} {n:>10}\n", container.name()));
    }
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({
            "out": args.out,
            "accounts": args.accounts,
            "seed": args.seed,
            "dirty": args.dirty,
            "documents": per_container,
            "total_documents": summary.total_documents,
            "dirty_documents": summary.dirty_documents,
            "seconds": seconds,
        }),
    })
}
