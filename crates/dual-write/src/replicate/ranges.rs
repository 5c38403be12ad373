//! The ranges' leases: planning them (one unit per container, one range per feed range, or one
//! per container in watermark mode), each cycle's serving of them by the workers in dependency
//! order, and releasing them (at the end, and those of dead local processes at the start).

use std::time::Instant;

use mystira_copy::{CONTAINERS, local_owner};
use mystira_postgres::leases::{self, RangePlan};
use serde_json::Value;
use tokio::sync::watch;

use super::{ReplicateError, ReplicationMode, Replicator, Turn};

impl Replicator<'_> {
    /// Creates the lease rows (the first replicator to start does; later ones join them) and
    /// frees the ranges of dead local processes.
    pub(super) async fn plan(&self) -> Result<(), ReplicateError> {
        let mut plans = Vec::new();
        for (name, container) in &self.containers {
            let ranges = match self.config.mode {
                ReplicationMode::ChangeFeed | ReplicationMode::Auto => container
                    .feed_ranges()
                    .await?
                    .into_iter()
                    .map(|r| RangePlan {
                        start: Value::String(r.as_str().to_owned()),
                        end: None,
                    })
                    .collect(),
                ReplicationMode::Watermark => vec![RangePlan {
                    start: Value::Null,
                    end: None,
                }],
            };
            plans.push(((*name).to_owned(), ranges));
        }
        // Replication ranges are never done, so once planned the job is always joined: its
        // checkpoints survive every restart.
        let joined = leases::start_or_join(self.pool, self.job, false, &plans).await?;
        if joined {
            self.release_dead_local_owners().await?;
        }
        Ok(())
    }

    /// One pass over every container, in dependency order: each container's ranges are served
    /// by the workers in parallel, and the next container starts when they are done.
    pub(super) async fn cycle(&self, stop: &watch::Receiver<bool>) -> Result<(), ReplicateError> {
        for name in CONTAINERS {
            if !self.containers.contains_key(name) {
                continue;
            }
            if *stop.borrow() {
                break;
            }
            let workers =
                (0..self.config.workers.max(1)).map(|w| self.serve_container(name, w, stop));
            let served: Vec<(u64, bool)> = futures::future::try_join_all(workers).await?;
            let ranges: u64 = served.iter().map(|(n, _)| n).sum();
            let all_caught_up = served.iter().all(|(_, c)| *c);
            let mut state = self.state();
            let entry = state.containers.entry(name.to_owned()).or_default();
            entry.ranges_served = ranges;
            if all_caught_up && ranges > 0 {
                state.caught_up_at.insert(name.to_owned(), Instant::now());
            }
        }
        self.state().cycles += 1;
        Ok(())
    }

    /// Worker `w` serves every range of `container` it can lease, one slot per range; returns
    /// how many ranges it served and whether they all caught up.
    async fn serve_container(
        &self,
        container: &'static str,
        worker: usize,
        stop: &watch::Receiver<bool>,
    ) -> Result<(u64, bool), ReplicateError> {
        let mut served = 0;
        let mut all_caught_up = true;
        // A slot holds at most one range of a container, so the number of slots a worker
        // needs is bounded by the container's ranges.
        for slot in 0..1024 {
            if *stop.borrow() {
                break;
            }
            let owner = format!("{}/{worker}.{slot}", self.config.owner);
            let Some(lease) =
                leases::take(self.pool, self.job, container, &owner, self.config.lease).await?
            else {
                break;
            };
            self.state().owners.insert(owner.clone());
            let turn = match self.config.mode {
                ReplicationMode::ChangeFeed | ReplicationMode::Auto => {
                    self.feed_range_turn(container, &owner, &lease, stop)
                        .await?
                }
                ReplicationMode::Watermark => {
                    self.watermark_turn(container, &owner, &lease, stop).await?
                }
            };
            served += 1;
            all_caught_up &= matches!(turn, Turn::CaughtUp(_));
        }
        Ok((served, all_caught_up))
    }

    pub(super) async fn release_all(&self) -> Result<(), ReplicateError> {
        let owners: Vec<String> = self.state().owners.iter().cloned().collect();
        for owner in owners {
            leases::release(self.pool, self.job, &owner).await?;
        }
        Ok(())
    }

    /// Leases held by processes of this host that no longer exist (killed) are released at
    /// once, so a restart resumes without waiting for them to expire. Other hosts' leases are
    /// left to expire: their liveness cannot be checked from here.
    async fn release_dead_local_owners(&self) -> Result<(), ReplicateError> {
        let here = local_owner(0);
        let host_prefix = here.trim_end_matches('0');
        for owner in leases::owners(self.pool, self.job).await? {
            let Some(rest) = owner.strip_prefix(host_prefix) else {
                continue;
            };
            let pid = rest.split('/').next().and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let released = leases::release(self.pool, self.job, &owner).await?;
                tracing::info!(released, "released the ranges of a dead local replicator");
            }
        }
        Ok(())
    }
}
