//! The block manager: the KV cache is cut into fixed-size blocks; each sequence holds a
//! table of block ids. Blocks are reference-counted so that sequences can share them; a
//! block returns to the free queue when its count reaches zero.
//! Block 0 is never handed out: the cache keeps it zeroed as padding.
//!
//! Prefix caching: a full block can be registered under the hash of its tokens and of
//! every token before it (`prefix::block_hash`). Freed blocks keep their content and their
//! registration until they are handed out again, least recently freed first, so a later
//! request with the same prefix takes them back instead of recomputing them. A freed block
//! that is not registered (a sequence's partly filled last block, or every block with
//! prefix caching off) holds nothing worth keeping: it is handed out again first.
//!
//! Blocks no sequence has used yet are handed out in order, after the freed blocks the
//! `BlockReuse` says come first. On the CPU the pool is allocated without being written, so
//! only the blocks used become resident.

use std::collections::{HashMap, VecDeque};

/// Where a new block comes from when the freed blocks left are all in the prefix cache:
/// one of them (the least recently freed), or a block no sequence has used yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReuse {
    /// Evict a cached block before using a new one: the pool's resident part never grows
    /// past the most blocks held at once, and the prefix cache lives in that part. For the
    /// CPU's default pool, which is sized for the worst case, not chosen by the user.
    ResidentFollowsLoad,
    /// Use every new block before evicting a cached one: the prefix cache fills the pool.
    /// For a pool of a size the user gave, and for CUDA's, which is resident anyway.
    CacheFillsPool,
}

#[derive(Debug)]
pub struct BlockManager {
    pub block_size: usize,
    reuse: BlockReuse,
    refs: Vec<u32>,
    /// Freed blocks, least recently freed first, unregistered ones put in front. An entry
    /// whose block was taken back (through the prefix cache) or freed again later is stale
    /// and skipped.
    free: VecDeque<u32>,
    /// The first of the blocks no sequence has used yet (they run to the end of the pool).
    unused: u32,
    num_free: usize,
    /// The prefix-cache key of each registered block.
    hash: Vec<Option<u64>>,
    cached: HashMap<u64, u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, reuse: BlockReuse) -> Self {
        assert!(block_size > 0 && num_blocks > 1);
        let mut refs = vec![0; num_blocks];
        refs[0] = 1; // the padding block
        BlockManager {
            block_size,
            reuse,
            free: VecDeque::new(),
            unused: 1,
            num_free: num_blocks - 1,
            refs,
            hash: vec![None; num_blocks],
            cached: HashMap::new(),
        }
    }

    /// Blocks sequences can use.
    pub fn num_blocks(&self) -> usize {
        self.refs.len() - 1
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Whether `table` can grow to hold `tokens` tokens.
    pub fn can_grow(&self, table: &[u32], tokens: usize) -> bool {
        self.blocks_for(tokens).saturating_sub(table.len()) <= self.num_free
    }

    /// Grows `table` to hold `tokens` tokens; false (and no change) when blocks are short.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.num_free {
            return false;
        }
        for _ in 0..need {
            let b = self.pop_free();
            // Its old content is about to be overwritten: it leaves the prefix cache.
            if let Some(h) = self.hash[b as usize].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                }
            }
            self.refs[b as usize] = 1;
            self.num_free -= 1;
            table.push(b);
        }
        true
    }

    fn pop_free(&mut self) -> u32 {
        while self.free.front().is_some_and(|&b| self.refs[b as usize] != 0) {
            self.free.pop_front();
        }
        let unused_left = (self.unused as usize) < self.refs.len();
        let evict = self.reuse == BlockReuse::ResidentFollowsLoad;
        match self.free.front() {
            // An unregistered block first; a cached one before an unused one only where
            // the resident part follows the load.
            Some(&b) if !unused_left || evict || self.hash[b as usize].is_none() => {
                self.free.pop_front();
                b
            }
            _ => {
                assert!(unused_left, "num_free counts a free block");
                self.unused += 1;
                self.unused - 1
            }
        }
    }

    /// Another holder for a block already in use.
    pub fn share(&mut self, block: u32) {
        assert!(self.refs[block as usize] > 0, "sharing a free block");
        self.refs[block as usize] += 1;
    }

    /// Releases every block of `table` and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        // Freed in reverse, so that a sequence's last blocks are handed out first and its
        // prefix stays cached longest.
        for b in table.drain(..).rev() {
            let r = &mut self.refs[b as usize];
            assert!(*r > 0, "double free of block {b}");
            *r -= 1;
            if *r == 0 {
                if self.hash[b as usize].is_some() {
                    self.free.push_back(b);
                } else {
                    self.free.push_front(b);
                }
                self.num_free += 1;
            }
        }
        if self.free.len() > 2 * self.refs.len() {
            self.compact();
        }
    }

    /// Drops stale entries of the free queue, keeping each free block's latest place.
    fn compact(&mut self) {
        let mut seen = vec![false; self.refs.len()];
        let mut kept: Vec<u32> = Vec::with_capacity(self.num_free);
        for &b in self.free.iter().rev() {
            if self.refs[b as usize] == 0 && !seen[b as usize] {
                seen[b as usize] = true;
                kept.push(b);
            }
        }
        self.free = kept.into_iter().rev().collect();
    }

    /// The block registered under `hash`, taken for one more holder (back from the free
    /// queue if no one held it).
    pub fn take_cached(&mut self, hash: u64) -> Option<u32> {
        let b = *self.cached.get(&hash)?;
        if self.refs[b as usize] == 0 {
            self.num_free -= 1;
        }
        self.refs[b as usize] += 1;
        Some(b)
    }

    /// Registers a full, computed block under `hash`, unless that content is already
    /// cached in another block.
    pub fn register(&mut self, block: u32, hash: u64) {
        if self.hash[block as usize].is_none() && !self.cached.contains_key(&hash) {
            self.hash[block as usize] = Some(hash);
            self.cached.insert(hash, block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_release_balance() {
        let mut m = BlockManager::new(5, 16, BlockReuse::CacheFillsPool);
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 17));
        assert_eq!(a.len(), 2);
        assert!(m.grow(&mut a, 32));
        assert_eq!(a.len(), 2);
        let mut b = Vec::new();
        assert!(!m.grow(&mut b, 48), "only two blocks are left");
        assert!(b.is_empty());
        m.share(a[0]);
        m.release(&mut a);
        assert_eq!(m.num_free(), 3);
        let mut c = vec![1];
        m.release(&mut c);
        assert_eq!(m.num_free(), 4);
    }

    /// Blocks without a registration come back first; registered ones wait their turn
    /// behind the blocks never handed out.
    #[test]
    fn unregistered_blocks_are_handed_out_again_first() {
        let mut m = BlockManager::new(8, 2, BlockReuse::CacheFillsPool); // blocks 1..=7
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 6));
        assert_eq!(a, [1, 2, 3]);
        m.register(a[0], 10);
        m.release(&mut a);
        let mut b = Vec::new();
        assert!(m.grow(&mut b, 4));
        assert_eq!(b, [2, 3], "the unregistered blocks, before the untouched 4..=7");
        let mut c = Vec::new();
        assert!(m.grow(&mut c, 2));
        assert_eq!(c, [4], "an untouched block before the cached one");
        assert_eq!(m.take_cached(10), Some(1));
    }

    /// With the resident part following the load, a cached block is evicted before a
    /// block no sequence has used is touched; the blocks held at once set what is touched.
    #[test]
    fn resident_blocks_follow_the_load() {
        let mut m = BlockManager::new(8, 2, BlockReuse::ResidentFollowsLoad); // blocks 1..=7
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 6));
        assert_eq!(a, [1, 2, 3]);
        for (k, &b) in a.iter().enumerate() {
            m.register(b, 10 + k as u64);
        }
        m.release(&mut a);
        let mut b = Vec::new();
        assert!(m.grow(&mut b, 4));
        assert_eq!(b, [3, 2], "the cached blocks, the sequence's last first, before the unused 4..=7");
        assert_eq!(m.take_cached(10), Some(1), "the prefix's first block is still cached");
        assert_eq!(m.take_cached(11), None, "evicted");
        let mut c = Vec::new();
        assert!(m.grow(&mut c, 4));
        assert_eq!(c, [4, 5], "nothing freed is left: the load grew, and so does the resident part");
        assert_eq!(m.num_free(), 2);
    }

    #[test]
    fn cached_blocks_come_back_until_handed_out_again() {
        let mut m = BlockManager::new(4, 2, BlockReuse::CacheFillsPool); // blocks 1..=3
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 4));
        m.register(a[0], 10);
        m.register(a[1], 11);
        let (first, second) = (a[0], a[1]);
        m.release(&mut a);
        assert_eq!(m.num_free(), 3);

        // Taken back from the free queue: no longer free, and not handed out twice.
        assert_eq!(m.take_cached(10), Some(first));
        assert_eq!(m.num_free(), 2);
        let mut b = vec![first];
        assert!(m.grow(&mut b, 6));
        assert!(!b[1..].contains(&first));
        assert_eq!(m.num_free(), 0);
        // Growing over the other cached block evicted it.
        assert!(b.contains(&second));
        assert_eq!(m.take_cached(11), None);
        m.release(&mut b);
        assert_eq!(m.num_free(), 3);
        assert_eq!(m.take_cached(10), Some(first), "its registration outlives the release");
    }
}

/// Random sequences of what the scheduler does to blocks — grow, share a cached prefix,
/// register, release — checked against a plain count of who holds what: no block is handed
/// to two holders unless shared, the free count is always the number of unheld blocks, and
/// releasing everything gives every block back (no leak, no double free).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Grow { seq: usize, tokens: usize },
        Register { seq: usize, block: usize, hash: u64 },
        TakeCached { seq: usize, hash: u64 },
        Release { seq: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 1..80usize).prop_map(|(seq, tokens)| Op::Grow { seq, tokens }),
            (0..4usize, 0..6usize, 0..5u64).prop_map(|(seq, block, hash)| Op::Register { seq, block, hash }),
            (0..4usize, 0..5u64).prop_map(|(seq, hash)| Op::TakeCached { seq, hash }),
            (0..4usize).prop_map(|seq| Op::Release { seq }),
        ]
    }

    fn check(m: &BlockManager, tables: &[Vec<u32>]) -> Result<(), TestCaseError> {
        let mut held = vec![0u32; m.refs.len()];
        for b in tables.iter().flatten() {
            prop_assert!(*b != 0, "the padding block was handed out");
            held[*b as usize] += 1;
        }
        for b in 1..m.refs.len() {
            prop_assert_eq!(m.refs[b], held[b], "block {} counts {} holders, {} hold it", b, m.refs[b], held[b]);
        }
        prop_assert_eq!(m.num_free(), held[1..].iter().filter(|&&h| h == 0).count());
        Ok(())
    }

    proptest! {
        #[test]
        fn blocks_are_never_lost_or_freed_twice(ops in proptest::collection::vec(op(), 1..60), follows_load: bool) {
            let reuse = if follows_load { BlockReuse::ResidentFollowsLoad } else { BlockReuse::CacheFillsPool };
            let mut m = BlockManager::new(9, 16, reuse);
            let mut tables: Vec<Vec<u32>> = vec![Vec::new(); 4];
            for op in ops {
                match op {
                    Op::Grow { seq, tokens } => {
                        let before = tables[seq].clone();
                        let fits = m.can_grow(&tables[seq], tokens);
                        prop_assert_eq!(m.grow(&mut tables[seq], tokens), fits);
                        if !fits {
                            prop_assert_eq!(&tables[seq], &before, "a failed grow changed the table");
                        }
                    }
                    Op::Register { seq, block, hash } => {
                        if let Some(&b) = tables[seq].get(block) {
                            m.register(b, hash);
                        }
                    }
                    Op::TakeCached { seq, hash } => {
                        // A sequence takes cached blocks only at its start, as the scheduler does.
                        if tables[seq].is_empty() {
                            if let Some(b) = m.take_cached(hash) {
                                tables[seq].push(b);
                            }
                        }
                    }
                    Op::Release { seq } => m.release(&mut tables[seq]),
                }
                check(&m, &tables)?;
            }
            for t in &mut tables {
                m.release(t);
            }
            prop_assert_eq!(m.num_free(), m.num_blocks());
        }
    }
}
