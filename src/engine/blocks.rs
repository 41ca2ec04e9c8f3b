//! The block manager: the KV cache is cut into fixed-size blocks; each sequence holds a
//! table of block ids. Blocks are reference-counted so that sequences can share them
//! (prefix caching, forks); a block returns to the free list when its count reaches zero.
//! Block 0 is never handed out: the cache keeps it zeroed as padding.

#[derive(Debug)]
pub struct BlockManager {
    pub block_size: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0 && num_blocks > 1);
        let mut refs = vec![0; num_blocks];
        refs[0] = 1; // the padding block
        BlockManager {
            block_size,
            // Pop from the end: low ids are handed out first.
            free: (1..num_blocks as u32).rev().collect(),
            refs,
        }
    }

    /// Blocks sequences can use.
    pub fn num_blocks(&self) -> usize {
        self.refs.len() - 1
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Whether `table` can grow to hold `tokens` tokens.
    pub fn can_grow(&self, table: &[u32], tokens: usize) -> bool {
        self.blocks_for(tokens).saturating_sub(table.len()) <= self.free.len()
    }

    /// Grows `table` to hold `tokens` tokens; false (and no change) when blocks are short.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop().expect("checked above");
            debug_assert_eq!(self.refs[b as usize], 0);
            self.refs[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Another holder for a block already in use.
    pub fn share(&mut self, block: u32) {
        assert!(self.refs[block as usize] > 0, "sharing a free block");
        self.refs[block as usize] += 1;
    }

    /// Releases every block of `table` and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..) {
            let r = &mut self.refs[b as usize];
            assert!(*r > 0, "double free of block {b}");
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_release_balance() {
        let mut m = BlockManager::new(5, 16);
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
}
