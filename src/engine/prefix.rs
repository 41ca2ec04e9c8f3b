//! Prefix-cache keys: a full block is known by the hash of its tokens chained with the
//! key of the block before it, so equal keys mean equal tokens from the very start (and
//! the same `cache_salt`, which seeds the chain). A block holding an image's placeholder
//! tokens mixes the image's hash in, so prompts with other images never share it.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::blocks::BlockManager;
use super::sequence::Sequence;

/// The chain's start for a request: requests with different salts never share blocks.
pub fn chain_start(salt: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    "sluice-prefix".hash(&mut h);
    salt.hash(&mut h);
    h.finish()
}

/// The key of a block holding `tokens`, after the block whose key is `parent`.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Gives a sequence that holds no blocks the cached blocks of its longest cached prefix
/// and marks their tokens computed; returns how many tokens that is. The last token is
/// always left to compute, since its logits are needed.
pub fn take_cached_prefix(seq: &mut Sequence, blocks: &mut BlockManager) -> usize {
    debug_assert!(seq.blocks.is_empty() && seq.hashes.is_empty());
    if seq.params.prompt_logprobs.is_some() {
        return 0; // every prompt position must be computed to be scored
    }
    let bs = blocks.block_size;
    let full = (seq.len() - 1) / bs;
    let mut parent = seq.salt;
    let mut chunk = Vec::with_capacity(bs);
    for b in 0..full {
        chunk.clear();
        chunk.extend((b * bs..(b + 1) * bs).map(|i| seq.token(i)));
        let h = block_hash(parent ^ seq.block_extra(b, bs), &chunk);
        let Some(block) = blocks.take_cached(h) else { break };
        seq.blocks.push(block);
        seq.hashes.push(h);
        parent = h;
    }
    seq.computed = seq.hashes.len() * bs;
    seq.computed
}

/// Registers the blocks that the last step filled, so later requests can share them.
pub fn register_full_blocks(seq: &mut Sequence, blocks: &mut BlockManager) {
    let bs = blocks.block_size;
    while (seq.hashes.len() + 1) * bs <= seq.computed {
        let b = seq.hashes.len();
        let tokens: Vec<u32> = (b * bs..(b + 1) * bs).map(|i| seq.token(i)).collect();
        let h = block_hash(seq.hashes.last().copied().unwrap_or(seq.salt) ^ seq.block_extra(b, bs), &tokens);
        blocks.register(seq.blocks[b], h);
        seq.hashes.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_everything_before() {
        let s = chain_start(None);
        let a = block_hash(s, &[1, 2]);
        assert_eq!(a, block_hash(chain_start(None), &[1, 2]));
        assert_ne!(a, block_hash(chain_start(Some("tenant")), &[1, 2]));
        assert_ne!(block_hash(a, &[3, 4]), block_hash(block_hash(s, &[1, 5]), &[3, 4]));
    }
}
