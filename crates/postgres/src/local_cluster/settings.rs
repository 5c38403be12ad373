//! The server settings the private cluster is created with: sized for loading a whole user
//! domain, not PostgreSQL's defaults (sized to start on any machine).
//!
//! Why (docs/initial-load.md, "Server settings for a load"): the upsert path inserts rows into
//! b-trees keyed by random uuids, so every insert touches a random leaf page.
//!
//! - `shared_buffers`: with the default 128 MB, once the indexes outgrow it (they are 2.8 GB
//!   at 1,000,000 accounts) almost every insert evicts a dirty page and reads another back.
//!   The upsert path of a million accounts took 1,235 s with the default and 991 s with 4 GB.
//! - `max_wal_size` and `checkpoint_timeout`: after each checkpoint the first change to a page
//!   writes the whole page to the WAL. With the default 1 GB a checkpoint is due after about
//!   half a gigabyte of WAL; once the pages a load touches add up to more than that, the full
//!   pages alone fill it, the next checkpoint is due at once, and the load writes whole pages
//!   for ever more of its changes. Measured in `bench --accounts 1000000` (2026-12-07): by
//!   the end of the upsert path a checkpoint every 4 seconds and 1.2 million full-page images
//!   a minute; 114 GB of WAL for an 8 GB database. With 16 GB and 30 minutes the same load
//!   wrote 16 GB of WAL with one checkpoint and took 841 s instead of 1,522 s; at 100,000
//!   accounts, where the loop never starts, they cost about 3 % (measured alternating the
//!   two). The cost is disk: `pg_wal` may hold up to about 16 GB during such a load (what was
//!   written since the last checkpoint, so a small load keeps it small), and a crash replays
//!   up to that much.
//!
//! The settings are written once, into `postgresql.conf`, when the cluster is created: an
//! operator's `ALTER SYSTEM` (in `postgresql.auto.conf`, read after it) still wins.

use std::path::Path;

use super::LocalClusterError;

/// The most `shared_buffers` the private cluster takes: enough for the indexes of a million
/// accounts, little enough for a developer's machine (the memory is only touched as it is used).
const MAX_SHARED_BUFFERS_MB: u64 = 4096;

/// PostgreSQL's default, and the least the cluster takes.
const MIN_SHARED_BUFFERS_MB: u64 = 128;

/// WAL between checkpoints (a soft limit; the module's comment says why so much).
const MAX_WAL_SIZE: &str = "16GB";

/// The longest time between checkpoints.
const CHECKPOINT_TIMEOUT: &str = "30min";

/// The lines appended to a new cluster's `postgresql.conf`, for a machine with `memory_mb` of
/// memory (what the kernel or the cgroup allows, whichever is less).
pub(crate) fn conf_lines(memory_mb: Option<u64>) -> String {
    // a quarter of the memory, the usual advice for a server that has the machine to itself
    let shared_buffers_mb = memory_mb
        .map_or(MIN_SHARED_BUFFERS_MB, |m| m / 4)
        .clamp(MIN_SHARED_BUFFERS_MB, MAX_SHARED_BUFFERS_MB);
    format!(
        "\n# Written by mystira-users when it created this private cluster: sized for loading\n\
         # a whole user domain (docs/initial-load.md, \"Server settings for a load\").\n\
         # ALTER SYSTEM overrides it.\n\
         shared_buffers = {shared_buffers_mb}MB\n\
         max_wal_size = {MAX_WAL_SIZE}\n\
         checkpoint_timeout = {CHECKPOINT_TIMEOUT}\n"
    )
}

/// Appends [`conf_lines`] to the `postgresql.conf` of the data directory `data`.
pub(crate) fn write(data: &Path) -> Result<(), LocalClusterError> {
    use std::io::Write as _;
    let conf = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(|e| LocalClusterError::io("open", &conf, e))?;
    file.write_all(conf_lines(memory_mb()).as_bytes())
        .map_err(|e| LocalClusterError::io("append the cluster's settings to", &conf, e))
}

/// This machine's memory in MiB as the server may use it: the smaller of the kernel's total
/// and the cgroup's limit (a container's), when they can be read.
fn memory_mb() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_kb(&text))
        .map(|kb| kb / 1024);
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .into_iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse::<u64>().ok())
    .map(|bytes| bytes / (1024 * 1024));
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

/// `MemTotal` of `/proc/meminfo`, in kB.
fn mem_total_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_buffers_is_a_quarter_of_memory_within_bounds() {
        assert!(conf_lines(Some(24 * 1024)).contains("shared_buffers = 4096MB\n"));
        assert!(conf_lines(Some(8 * 1024)).contains("shared_buffers = 2048MB\n"));
        assert!(conf_lines(Some(256)).contains("shared_buffers = 128MB\n"));
        assert!(conf_lines(None).contains("shared_buffers = 128MB\n"));
        assert!(conf_lines(None).contains("max_wal_size = 16GB\ncheckpoint_timeout = 30min\n"));
        let lines = conf_lines(Some(1024));
        // every line is a comment or a setting postgresql.conf can read
        for line in lines
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(line.split_once(" = ").is_some(), "{line}");
        }
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_kb(text), Some(24_576_000));
        assert_eq!(mem_total_kb("MemFree: 3 kB\n"), None);
    }
}
