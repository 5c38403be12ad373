//! Generates a synthetic export and prints how long it took.
//!
//! `cargo run --release -p mystira-cosmos-codec --example generate_export -- <dir> [accounts] [seed] [dirty]`

use std::path::PathBuf;
use std::time::Instant;

use mystira_cosmos_codec::generate::{GenerateOptions, write_export};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: generate_export <dir> [accounts] [seed] [dirty]")?,
    );
    let accounts = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let seed = args.next().map(|a| a.parse()).transpose()?.unwrap_or(42);
    let dirty = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0.02);
    let started = Instant::now();
    let summary = write_export(
        &dir,
        &GenerateOptions {
            accounts,
            seed,
            dirty,
        },
    )?;
    let elapsed = started.elapsed();
    for (name, entry) in &summary.manifest.files {
        println!("{name}: {} lines, {} bytes", entry.lines, entry.bytes);
    }
    println!(
        "{} documents ({} dirty) for {accounts} accounts in {:.2}s",
        summary.total_documents,
        summary.dirty_documents,
        elapsed.as_secs_f64()
    );
    Ok(())
}
