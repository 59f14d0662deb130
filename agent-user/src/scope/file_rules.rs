//! A task's object rules for the BPF LSM engine (`FILE_RULES`), kept small in the node daemon.
//!
//! A compiled scope's object rules are mostly the same for every task of a node: the protected
//! defaults (credential locations, node devices, Warden's evidence and every regular file
//! beneath them, the control paths) are ≈ 1,400 objects on a test node, the scope's own grants
//! a handful. The daemon keeps each running task's rules (to unbind them when the task ends),
//! so 256 tasks held 256 copies of nearly the same table, with each object's canonical path
//! (≈ 200 KiB per task, `docs/benchmarks.md`).
//!
//! Here a table is only what the kernel map needs — (dev, inode, bits), 24 bytes an object —
//! and it is stored as the difference from a table shared with other tasks: the compile still
//! resolves every object afresh for each task (what the kernel gets is that task's snapshot of
//! the filesystem, exactly as before), then [`FileRules::share`] finds a recent table it
//! differs little from and keeps only the difference. The node's tables change as tasks come
//! and go (each task adds its state file and pinned links below the daemon's protected
//! directories), so a table that has drifted too far from every recent one becomes a shared
//! table itself.
use std::sync::{Arc, Mutex};

/// An object rule: `bits` of `agent_common::maps::file_rule` on the object (userspace
/// `st_dev`, inode) and, for a directory, everything beneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileRule {
    pub dev: u64,
    pub ino: u64,
    pub bits: u32,
}

impl FileRule {
    fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// One task's object rules: each object once, in (dev, inode) order. Compared by content.
#[derive(Debug, Clone, Default)]
pub struct FileRules {
    /// A table shared with other tasks (empty when there is none).
    base: Arc<[FileRule]>,
    /// Rules not in `base` or with other bits there, in order.
    own: Box<[FileRule]>,
    /// Objects of `base` this table does not have, in order.
    gone: Box<[(u64, u64)]>,
}

/// Shared tables kept for the next compiles to be compared with (the most recent last). Each
/// costs one table; a task's table stays alive through its `Arc` after it leaves this list.
static RECENT: Mutex<Vec<Arc<[FileRule]>>> = Mutex::new(Vec::new());
const RECENT_KEPT: usize = 4;

impl FileRules {
    /// `rules` (each object once, in (dev, inode) order), stored as the difference from the
    /// recent shared table it is closest to when that difference is small, else as a new
    /// shared table.
    pub fn share(rules: Vec<FileRule>) -> FileRules {
        Self::share_in(&RECENT, rules)
    }

    fn share_in(recent: &Mutex<Vec<Arc<[FileRule]>>>, rules: Vec<FileRule>) -> FileRules {
        debug_assert!(rules.windows(2).all(|w| w[0].key() < w[1].key()), "sorted, each object once");
        if rules.is_empty() {
            return FileRules::default();
        }
        // Small enough to pay for itself: on a node that adds k objects per task to tables of
        // n, a new shared table every n / (8 k) tasks.
        let limit = rules.len() / 8 + 16;
        let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
        let best = recent
            .iter()
            .rev()
            .filter_map(|b| difference_len(b, &rules, limit).map(|n| (n, b)))
            .min_by_key(|(n, _)| *n);
        if let Some((_, base)) = best {
            let (own, gone) = difference(base, &rules);
            return FileRules { base: base.clone(), own: own.into(), gone: gone.into() };
        }
        let base: Arc<[FileRule]> = rules.into();
        if recent.len() >= RECENT_KEPT {
            recent.remove(0);
        }
        recent.push(base.clone());
        FileRules { base, own: Box::default(), gone: Box::default() }
    }

    /// Every rule, in (dev, inode) order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { base: &self.base, own: &self.own, gone: &self.gone }
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The rules of the object (dev, inode), if any.
    pub fn get(&self, dev: u64, ino: u64) -> Option<u32> {
        self.iter().find(|r| r.key() == (dev, ino)).map(|r| r.bits)
    }

    /// Bytes this table holds of its own (the shared table not counted).
    pub fn own_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.own) + std::mem::size_of_val(&*self.gone)
    }
}

impl PartialEq for FileRules {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for FileRules {}

/// The rules of a [`FileRules`], in order.
pub struct Iter<'a> {
    base: &'a [FileRule],
    own: &'a [FileRule],
    gone: &'a [(u64, u64)],
}

impl Iterator for Iter<'_> {
    type Item = FileRule;

    fn next(&mut self) -> Option<FileRule> {
        loop {
            match (self.base.split_first(), self.own.split_first()) {
                (None, None) => return None,
                (Some((b, rest)), o) if o.is_none_or(|(o, _)| b.key() < o.key()) => {
                    self.base = rest;
                    while self.gone.first().is_some_and(|g| *g < b.key()) {
                        self.gone = &self.gone[1..];
                    }
                    if self.gone.first() == Some(&b.key()) {
                        self.gone = &self.gone[1..];
                        continue;
                    }
                    return Some(*b);
                }
                (b, Some((o, rest))) => {
                    if let Some((b, brest)) = b
                        && b.key() == o.key()
                    {
                        self.base = brest;
                    }
                    self.own = rest;
                    return Some(*o);
                }
                (Some(_), None) => unreachable!("handled above"),
            }
        }
    }
}

/// How many entries `rules` differs from `base` by, or `None` once that exceeds `limit`.
fn difference_len(base: &[FileRule], rules: &[FileRule], limit: usize) -> Option<usize> {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < base.len() || j < rules.len() {
        match (base.get(i), rules.get(j)) {
            (Some(b), Some(r)) if b.key() == r.key() => {
                n += usize::from(b.bits != r.bits);
                i += 1;
                j += 1;
            }
            (Some(b), Some(r)) if b.key() < r.key() => {
                n += 1;
                i += 1;
            }
            (Some(_), None) => {
                n += 1;
                i += 1;
            }
            _ => {
                n += 1;
                j += 1;
            }
        }
        if n > limit {
            return None;
        }
    }
    Some(n)
}

/// (`own`, `gone`) such that `base` with `gone` removed and `own` laid over it is `rules`.
fn difference(base: &[FileRule], rules: &[FileRule]) -> (Vec<FileRule>, Vec<(u64, u64)>) {
    let (mut own, mut gone) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < base.len() || j < rules.len() {
        match (base.get(i), rules.get(j)) {
            (Some(b), Some(r)) if b.key() == r.key() => {
                if b.bits != r.bits {
                    own.push(*r);
                }
                i += 1;
                j += 1;
            }
            (Some(b), Some(r)) if b.key() < r.key() => {
                gone.push(b.key());
                i += 1;
            }
            (Some(b), None) => {
                gone.push(b.key());
                i += 1;
            }
            (_, Some(r)) => {
                own.push(*r);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    (own, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(v: &[(u64, u64, u32)]) -> Vec<FileRule> {
        let mut t: Vec<FileRule> = v.iter().map(|&(dev, ino, bits)| FileRule { dev, ino, bits }).collect();
        t.sort();
        t.dedup_by_key(|r| r.key());
        t
    }

    proptest! {
        /// Whatever was shared before, a table reads back exactly as it was given.
        #[test]
        fn shared_tables_read_back_exactly(
            tables in proptest::collection::vec(
                proptest::collection::vec((0u64..3, 0u64..200, 1u32..4), 0..300), 1..12),
        ) {
            let mut kept = Vec::new();
            for t in &tables {
                let t = table(t);
                let f = FileRules::share(t.clone());
                prop_assert_eq!(f.iter().collect::<Vec<_>>(), t.clone());
                prop_assert_eq!(f.len(), t.len());
                kept.push((f, t));
            }
            for (f, t) in &kept {
                prop_assert_eq!(f.iter().collect::<Vec<_>>(), t.clone(), "after later tables were shared");
            }
        }
    }

    #[test]
    fn a_close_table_keeps_only_its_difference() {
        let recent = Mutex::new(Vec::new());
        let share = |t: Vec<FileRule>| FileRules::share_in(&recent, t);
        let base = table(&(0..1000).map(|i| (77, i, 1)).collect::<Vec<_>>());
        let a = share(base.clone());
        assert_eq!(a.own_bytes(), 0, "the first of its kind is shared itself");
        let mut close = base.clone();
        close[10].bits = 2; // other bits
        close.remove(500); // gone
        close.push(FileRule { dev: 77, ino: 5000, bits: 4 }); // new
        let b = share(close.clone());
        assert!(Arc::ptr_eq(&a.base, &b.base), "shares the first table");
        assert_eq!((b.own.len(), b.gone.len()), (2, 1));
        assert_eq!(b.iter().collect::<Vec<_>>(), close);
        assert_eq!(b.get(77, 10), Some(2));
        assert_eq!(b.get(77, 500), None);
        // Far from every recent table: a shared table of its own.
        let far = table(&(0..1000).map(|i| (78, i, 1)).collect::<Vec<_>>());
        let c = share(far.clone());
        assert!(!Arc::ptr_eq(&a.base, &c.base) && c.own_bytes() == 0);
        assert_eq!(c.iter().collect::<Vec<_>>(), far);
    }
}
