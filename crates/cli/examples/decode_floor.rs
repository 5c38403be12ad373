//! The client's share of a load with no database at all: how long `threads` threads take to
//! turn an export's lines into COPY input, tier by tier. It bounds what any load path of ours
//! can reach on this machine, since every path does at least this much before PostgreSQL sees
//! a byte (docs/benchmarks.md, "The decode floor").
//!
//! ```text
//! cargo run --release -p mystira-users --example decode_floor -- EXPORT_DIR [THREADS] [RUNS]
//! ```
//!
//! Tiers, each including the ones before it:
//! - `parse`: JSON syntax only (`serde::de::IgnoredAny`), the least any JSON reader does;
//! - `value`: parse into `serde_json::Value`, what the export reader hands on;
//! - `map`: the codec's decode and mapping into the bulk writer's documents;
//! - `encode`: the binary COPY rows of each page of 1,000 documents.
//!
//! The files are read into memory first (untimed), so disk reads are not part of any tier.

use std::path::PathBuf;
use std::time::Instant;

use mystira_copy::mapping::{Mapped, map_document};
use mystira_postgres::initial_load::encoded_size;

// the same allocator as the binary, so the figures are the binary's
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];
const PAGE: usize = 1000;

#[derive(Clone, Copy)]
enum Tier {
    Parse,
    Value,
    Map,
    Encode,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Parse, Tier::Value, Tier::Map, Tier::Encode];

    fn name(self) -> &'static str {
        match self {
            Tier::Parse => "parse",
            Tier::Value => "value",
            Tier::Map => "map",
            Tier::Encode => "encode",
        }
    }
}

/// Runs `tier` over one thread's share of lines; returns a checksum so no work is optimised
/// away (documents parsed, rejected or bytes encoded).
fn work(tier: Tier, container: &str, lines: &[&[u8]]) -> usize {
    let mut total = 0usize;
    let mut accounts = Vec::new();
    let mut profiles = Vec::new();
    let mut signups = Vec::new();
    for line in lines {
        match tier {
            Tier::Parse => {
                total += usize::from(serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok());
            }
            Tier::Value => {
                total += usize::from(serde_json::from_slice::<serde_json::Value>(line).is_ok());
            }
            Tier::Map | Tier::Encode => {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                match map_document(container, &value, "decode-floor") {
                    Mapped::Account(a) => accounts.push(*a),
                    Mapped::Profile(p) => profiles.push(*p),
                    Mapped::Signup(s) => signups.push(*s),
                    Mapped::Reject { .. } => total += 1,
                }
                if accounts.len() + profiles.len() + signups.len() >= PAGE {
                    total += flush(tier, &mut accounts, &mut profiles, &mut signups);
                }
            }
        }
    }
    total + flush(tier, &mut accounts, &mut profiles, &mut signups)
}

fn flush(
    tier: Tier,
    accounts: &mut Vec<mystira_postgres::bulk::AccountDocument>,
    profiles: &mut Vec<mystira_postgres::bulk::ProfileDocument>,
    signups: &mut Vec<mystira_postgres::bulk::SignupDocument>,
) -> usize {
    let mut total = accounts.len() + profiles.len() + signups.len();
    if matches!(tier, Tier::Encode) {
        total += encoded_size(accounts) + encoded_size(profiles) + encoded_size(signups);
    }
    accounts.clear();
    profiles.clear();
    signups.clear();
    total
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: decode_floor EXPORT_DIR [THREADS] [RUNS]")?,
    );
    let threads: usize = args.next().map_or(Ok(2), |t| t.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |r| r.parse())?;

    let files: Vec<(&str, Vec<u8>)> = CONTAINERS
        .iter()
        .filter_map(|c| {
            let path = dir.join(format!("{c}.jsonl"));
            path.exists().then(|| std::fs::read(&path).map(|b| (*c, b)))
        })
        .collect::<Result<_, _>>()?;
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    // each thread takes every `threads`-th line of each file, as workers share ranges
    let lines: Vec<(&str, Vec<&[u8]>)> = files
        .iter()
        .map(|(c, b)| {
            let lines = b
                .split(|&x| x == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .collect();
            (*c, lines)
        })
        .collect();
    let docs: usize = lines.iter().map(|(_, l)| l.len()).sum();
    println!(
        "{docs} documents, {:.1} MiB, {threads} threads, best and median of {runs} runs",
        bytes as f64 / f64::from(1 << 20)
    );

    for tier in Tier::ALL {
        let mut seconds = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let lines = &lines;
                        s.spawn(move || {
                            lines
                                .iter()
                                .map(|(c, l)| {
                                    let share: Vec<&[u8]> =
                                        l.iter().skip(t).step_by(threads).copied().collect();
                                    work(tier, c, &share)
                                })
                                .sum::<usize>()
                        })
                    })
                    .collect();
                let checksum: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
                std::hint::black_box(checksum);
            });
            seconds.push(started.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let (best, median) = (seconds[0], seconds[seconds.len() / 2]);
        println!(
            "{:<7} best {best:6.2} s  median {median:6.2} s  {:>8.0} docs/s  {:6.1} MiB/s",
            tier.name(),
            docs as f64 / median,
            bytes as f64 / f64::from(1 << 20) / median,
        );
    }
    Ok(())
}
