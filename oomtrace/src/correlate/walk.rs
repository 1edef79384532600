//! Which cgroup's limit was hit: decoding the kernel's cgroup walks and the
//! "at its limit" fallback.
//!
//! The verdict is taken from the best source available (see
//! [`crate::correlate`]): the kernel's own `oom_control` (exact), then the
//! kernel log's `oom-kill:` summary (exact, but rate-limited), then the walk of
//! the victim's ancestors captured in the kernel at kill time: the lowest
//! ancestor whose usage is within [`AT_LIMIT_MARGIN_BYTES`] of its limit is
//! where the charge failed, because the kernel charges a page counter from
//! the leaf upwards and fails at the first one over its limit.

use oomtrace_common::{CgroupWalk, WALK_ABSENT, WALK_READ_FAILED, WALK_TRUNCATED, c_str};

use crate::report::CgroupUsage;

/// How close to its limit a cgroup must be to count as the one that was hit:
/// a failed charge is at most a huge page (2 MiB) plus per-CPU charge stock.
pub const AT_LIMIT_MARGIN_BYTES: u64 = 4 << 20;

/// One level of a decoded walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// Path relative to the memory controller's mount (`/` for the root).
    pub path: String,
    pub id: u64,
    pub usage_bytes: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

impl Level {
    pub fn at_limit(&self) -> bool {
        self.limit_bytes
            .is_some_and(|limit| self.usage_bytes.saturating_add(AT_LIMIT_MARGIN_BYTES) >= limit)
    }

    pub fn usage(&self) -> CgroupUsage {
        CgroupUsage {
            path: self.path.clone(),
            usage_bytes: self.usage_bytes,
            limit_bytes: self.limit_bytes,
        }
    }
}

/// A decoded [`CgroupWalk`], leaf first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub levels: Vec<Level>,
    /// The hierarchy was deeper than the kernel side captures: paths start with `.../`.
    pub truncated: bool,
    /// Some kernel read failed: names or figures may be incomplete.
    pub read_failed: bool,
}

impl Walk {
    /// Decodes a walk; `None` when the kernel did not capture one.
    pub fn decode(raw: &CgroupWalk, page_size: u64) -> Option<Self> {
        if raw.flags & WALK_ABSENT != 0 || raw.depth == 0 {
            return None;
        }
        let depth = (raw.depth as usize).min(raw.levels.len());
        let truncated = raw.flags & WALK_TRUNCATED != 0;
        let names: Vec<String> = raw.levels[..depth]
            .iter()
            .map(|l| String::from_utf8_lossy(c_str(&l.name)).into_owned())
            .collect();
        // Leaf first; when not truncated the last entry is the root, whose name is not part of paths.
        let unlimited = page_counter_max(page_size);
        let mut levels = Vec::with_capacity(depth);
        for (i, raw_level) in raw.levels[..depth].iter().enumerate() {
            let upper = if truncated { depth } else { depth - 1 };
            let mut parts: Vec<&str> = names[i..upper].iter().map(String::as_str).collect();
            parts.reverse();
            let path = match (truncated, parts.is_empty()) {
                (false, true) => "/".to_string(),
                (false, false) => format!("/{}", parts.join("/")),
                (true, _) => format!(".../{}", parts.join("/")),
            };
            let limit_bytes = (raw_level.max_pages < unlimited)
                .then(|| raw_level.max_pages.saturating_mul(page_size));
            levels.push(Level {
                path,
                id: raw_level.id,
                usage_bytes: raw_level.usage_pages.saturating_mul(page_size),
                limit_bytes,
            });
        }
        Some(Self {
            levels,
            truncated,
            read_failed: raw.flags & WALK_READ_FAILED != 0,
        })
    }

    /// The task's own cgroup.
    pub fn leaf(&self) -> Option<&Level> {
        self.levels.first()
    }

    /// The lowest level at its limit: where the failed charge stopped.
    pub fn at_limit(&self) -> Option<&Level> {
        self.levels.iter().find(|l| l.at_limit())
    }

    /// The level with this path.
    pub fn find(&self, path: &str) -> Option<&Level> {
        self.levels.iter().find(|l| l.path == path)
    }

    /// Every level as the report shows it, leaf first.
    pub fn usages(&self) -> Vec<CgroupUsage> {
        self.levels.iter().map(Level::usage).collect()
    }
}

/// `PAGE_COUNTER_MAX` in pages: `LONG_MAX / PAGE_SIZE` on 64-bit kernels.
/// Values at or above it (and failed reads, `u64::MAX`) mean "unlimited".
pub fn page_counter_max(page_size: u64) -> u64 {
    (i64::MAX as u64) / page_size.max(1)
}

#[cfg(test)]
mod tests {
    use oomtrace_common::{CgroupLevel, MAX_DEPTH, NAME_LEN};

    use super::*;

    fn level(name: &str, usage_pages: u64, max_pages: u64) -> CgroupLevel {
        let mut n = [0u8; NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        CgroupLevel {
            id: 1,
            usage_pages,
            max_pages,
            name: n,
        }
    }

    fn raw(levels: &[CgroupLevel], flags: u32) -> CgroupWalk {
        let mut w = CgroupWalk {
            depth: levels.len() as u32,
            flags,
            levels: [level("", 0, 0); MAX_DEPTH],
        };
        w.levels[..levels.len()].copy_from_slice(levels);
        w
    }

    const UNLIMITED: u64 = i64::MAX as u64 / 4096;

    #[test]
    fn paths_and_limits_from_a_kubepods_walk() {
        // The shape of a real v1 walk (cgroupfs driver): leaf first, root last with an empty name.
        let w = raw(
            &[
                level(
                    "4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
                    16_000,
                    16_384,
                ),
                level("pod8833712d-6e69-4f5c-95f3-aebd020ce2e7", 16_000, UNLIMITED),
                level("burstable", 20_000, UNLIMITED),
                level("kubepods", 30_000, 1_000_000),
                level("", 90_000, UNLIMITED),
            ],
            0,
        );
        let walk = Walk::decode(&w, 4096).expect("walk");
        assert_eq!(
            walk.leaf().map(|l| l.path.as_str()),
            Some(
                "/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"
            )
        );
        assert_eq!(walk.levels[3].path, "/kubepods");
        assert_eq!(walk.levels[4].path, "/");
        assert_eq!(walk.levels[0].limit_bytes, Some(16_384 * 4096));
        assert_eq!(walk.levels[1].limit_bytes, None);
        // 16000 pages used of 16384: 1.5 MiB short of the limit, within the margin.
        assert_eq!(
            walk.at_limit().map(|l| l.path.as_str()),
            Some(walk.levels[0].path.as_str())
        );
    }

    #[test]
    fn the_lowest_level_at_its_limit_wins_and_none_means_node() {
        let parent_hit = raw(
            &[
                level("child", 10_000, UNLIMITED),
                level("parent", 12_800, 12_800),
                level("", 50_000, UNLIMITED),
            ],
            0,
        );
        let walk = Walk::decode(&parent_hit, 4096).expect("walk");
        assert_eq!(walk.at_limit().map(|l| l.path.as_str()), Some("/parent"));

        let none = raw(
            &[
                level("child", 10_000, 1_000_000),
                level("", 50_000, UNLIMITED),
            ],
            0,
        );
        assert_eq!(Walk::decode(&none, 4096).expect("walk").at_limit(), None);
    }

    #[test]
    fn absent_and_truncated_walks() {
        assert_eq!(Walk::decode(&raw(&[], WALK_ABSENT), 4096), None);
        let t = raw(
            &[level("c", 1, UNLIMITED), level("b", 1, UNLIMITED)],
            WALK_TRUNCATED,
        );
        let walk = Walk::decode(&t, 4096).expect("walk");
        assert!(walk.truncated);
        assert_eq!(walk.levels[0].path, ".../b/c");
        // A failed max read (u64::MAX) is not a limit.
        let f = raw(&[level("c", 1, u64::MAX), level("", 1, UNLIMITED)], 0);
        assert_eq!(
            Walk::decode(&f, 4096).expect("walk").levels[0].limit_bytes,
            None
        );
    }
}
