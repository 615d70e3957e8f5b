//! Which cores the per-core runtimes run on: `CORES` and `PIN_CORES`
//! resolved against what this process may use.
//!
//! Two limits apply to a process in a container, and they differ:
//! * its **CPU set** (`sched_getaffinity`, what `--cpuset-cpus` sets): the
//!   cores it may run on at all;
//! * its **CPU quota** (CFS bandwidth: cgroup v2 `cpu.max`, v1
//!   `cpu.cfs_quota_us` / `cpu.cfs_period_us`, what `--cpus=1.5` sets): how
//!   much CPU time it may use per period, spread over every core of the set.
//!
//! A runtime per core of the set under a smaller quota makes more threads
//! than the quota can run: each period they burn the quota together, then
//! all wait for the next one (up to 100 ms by default), which shows as p99
//! spikes. So the default, `CORES=auto`, follows the quota's whole cores, as
//! Go's automaxprocs and the JVM's container support do: `1.5` cores give one
//! runtime. The quota is read by [`std::thread::available_parallelism`],
//! which reads both cgroup versions and takes the tightest limit on the path
//! to the hierarchy's root, rounded down, at least 1. `CORES=all` keeps a
//! runtime per core of the set, quota or not; an explicit count or list is
//! taken as given, with a warning when it exceeds the quota.

use core_affinity::CoreId;
use thiserror::Error;

/// Which cores the per-core HTTP runtimes run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CoreSelection {
    /// The default: every core of the CPU set, but no more than the whole
    /// cores of the cgroup CPU quota (see this module).
    #[default]
    Auto,
    /// Every core this process may run on (its `sched_getaffinity` set, which
    /// honours a container's cpuset), whatever its CPU quota.
    All,
    /// The first N cores of that set.
    Count(usize),
    /// These core ids exactly; each must be in that set.
    List(Vec<usize>),
}

/// `CORES` asks for cores this process cannot have.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoresError {
    /// A count larger than the CPU set.
    #[error("{asked} cores asked, this process may use {allowed}")]
    TooMany {
        /// The count asked for.
        asked: usize,
        /// The size of the CPU set.
        allowed: usize,
    },
    /// A core id outside the CPU set.
    #[error("core {id} is not in this process's CPU set {allowed:?}")]
    NotAllowed {
        /// The id asked for.
        id: usize,
        /// The CPU set.
        allowed: Vec<usize>,
    },
}

/// What this process may use, as read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuLimits {
    /// The CPU set's core ids, ascending; empty when it cannot be read.
    pub cpu_set: Vec<usize>,
    /// Whole cores of CPU time the process may use (the CPU set's size when
    /// there is no quota), at least 1.
    pub parallelism: usize,
}

impl CpuLimits {
    /// This process's limits now.
    pub fn of_this_process() -> Self {
        let mut cpu_set: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        cpu_set.sort_unstable();
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { cpu_set, parallelism }
    }

    /// Whole cores of quota, when the quota is tighter than the CPU set.
    fn quota(&self) -> Option<usize> {
        (!self.cpu_set.is_empty() && self.parallelism < self.cpu_set.len()).then_some(self.parallelism)
    }
}

/// The runtimes to start: one per entry, pinned to its core or unpinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cores {
    /// One per runtime.
    pub cpus: Vec<Option<CoreId>>,
    /// Why this many, for the start-up log and `check-config`.
    pub reason: String,
    /// Set when the choice runs more runtimes than the quota's whole cores.
    pub over_quota: Option<String>,
}

/// Resolves `selection` against this process's limits now: what `serve`
/// starts and `check-config` reports.
///
/// # Errors
/// As [`select`].
pub fn for_this_process(selection: &CoreSelection, pin: bool) -> Result<Cores, CoresError> {
    select(selection, pin, &CpuLimits::of_this_process())
}

/// Resolves `selection` against `limits`.
///
/// # Errors
/// [`CoresError`] when `selection` names more cores, or other cores, than
/// the CPU set holds.
pub fn select(selection: &CoreSelection, pin: bool, limits: &CpuLimits) -> Result<Cores, CoresError> {
    let set = &limits.cpu_set;
    if set.is_empty() {
        // Without the set nothing can be pinned; the count still follows
        // the quota (available_parallelism reads it without the set).
        let n = match selection {
            CoreSelection::Auto | CoreSelection::All => limits.parallelism,
            CoreSelection::Count(c) => *c,
            CoreSelection::List(l) => l.len(),
        };
        let reason = format!("{n} unpinned runtimes: this process's CPU set cannot be read");
        return Ok(Cores { cpus: vec![None; n], reason, over_quota: None });
    }
    let quota = limits.quota();
    let (ids, reason): (Vec<usize>, String) = match selection {
        CoreSelection::Auto => match quota {
            Some(q) => (
                set[..q].to_vec(),
                format!(
                    "CORES=auto: {q} of the CPU set's {} cores {set:?}, the whole cores of the cgroup CPU quota \
                     (CORES=all ignores the quota)",
                    set.len()
                ),
            ),
            None => (set.clone(), format!("CORES=auto: every core of the CPU set {set:?} (no tighter CPU quota)")),
        },
        CoreSelection::All => (set.clone(), format!("CORES=all: every core of the CPU set {set:?}")),
        CoreSelection::Count(n) if *n <= set.len() => (set[..*n].to_vec(), format!("CORES={n}: the first {n} of {set:?}")),
        CoreSelection::Count(n) => return Err(CoresError::TooMany { asked: *n, allowed: set.len() }),
        CoreSelection::List(ids) => {
            if let Some(&id) = ids.iter().find(|id| !set.contains(id)) {
                return Err(CoresError::NotAllowed { id, allowed: set.clone() });
            }
            (ids.clone(), format!("CORES={ids:?}"))
        }
    };
    let over_quota = quota.filter(|&q| ids.len() > q).map(|q| {
        format!(
            "{} runtimes but the cgroup CPU quota allows {q} whole cores: they will be throttled each CFS period \
             (tuning.md §14)",
            ids.len()
        )
    });
    let cpus = ids.into_iter().map(|id| pin.then_some(CoreId { id })).collect();
    Ok(Cores { cpus, reason, over_quota })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(set: &[usize], parallelism: usize) -> CpuLimits {
        CpuLimits { cpu_set: set.to_vec(), parallelism }
    }

    fn ids(c: &Cores) -> Vec<Option<usize>> {
        c.cpus.iter().map(|c| c.map(|c| c.id)).collect()
    }

    #[test]
    fn auto_follows_the_quotas_whole_cores_and_all_ignores_it() {
        let quota_1 = limits(&[2, 3, 5], 1);
        let auto = select(&CoreSelection::Auto, true, &quota_1).unwrap();
        assert_eq!(ids(&auto), vec![Some(2)]);
        assert!(auto.reason.contains("quota"), "{}", auto.reason);
        assert_eq!(auto.over_quota, None);
        let all = select(&CoreSelection::All, true, &quota_1).unwrap();
        assert_eq!(ids(&all), vec![Some(2), Some(3), Some(5)]);
        assert!(all.over_quota.unwrap().contains("allows 1 whole cores"));
    }

    #[test]
    fn without_a_tighter_quota_auto_takes_the_whole_set() {
        let auto = select(&CoreSelection::Auto, false, &limits(&[0, 1], 2)).unwrap();
        assert_eq!(ids(&auto), vec![None, None]);
        assert!(auto.reason.contains("no tighter CPU quota"));
    }

    #[test]
    fn explicit_choices_are_kept_and_warned_about_over_the_quota() {
        let l = limits(&[0, 1, 2, 3], 2);
        let three = select(&CoreSelection::Count(3), true, &l).unwrap();
        assert_eq!(ids(&three), vec![Some(0), Some(1), Some(2)]);
        assert!(three.over_quota.is_some());
        let two = select(&CoreSelection::List(vec![1, 3]), true, &l).unwrap();
        assert_eq!(ids(&two), vec![Some(1), Some(3)]);
        assert_eq!(two.over_quota, None);
    }

    #[test]
    fn choices_outside_the_set_are_refused() {
        let l = limits(&[1], 1);
        assert_eq!(
            select(&CoreSelection::Count(2), true, &l).unwrap_err(),
            CoresError::TooMany { asked: 2, allowed: 1 }
        );
        let e = select(&CoreSelection::List(vec![0]), true, &l).unwrap_err();
        assert_eq!(e.to_string(), "core 0 is not in this process's CPU set [1]");
    }

    #[test]
    fn an_unreadable_set_still_follows_the_quota_unpinned() {
        let c = select(&CoreSelection::Auto, true, &limits(&[], 3)).unwrap();
        assert_eq!(ids(&c), vec![None, None, None]);
    }
}
