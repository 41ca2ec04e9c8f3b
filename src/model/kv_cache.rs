//! The paged KV cache's storage: per layer, one key and one value tensor of
//! `[num_blocks · block_size, kv_heads, head_dim]`. Which slots belong to which sequence is
//! the block manager's business (`engine::blocks`); this only reads and writes them.
//!
//! The storage is not cleared (clearing gigabytes costs seconds at start-up and commits the
//! memory at once): a slot is only read after it was written, except block 0, which is
//! zeroed here, never handed to a sequence, and serves as padding for batched reads.

use tch::{Device, Kind, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvCache {
    /// The slot that always reads as zeros.
    pub const PAD_SLOT: i64 = 0;

    pub fn new(
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        kind: Kind,
        device: Device,
    ) -> Self {
        let shape = [(num_blocks * block_size) as i64, kv_heads as i64, head_dim as i64];
        let alloc = || {
            let t = Tensor::empty(shape, (kind, device));
            let _ = t.narrow(0, 0, block_size as i64).zero_();
            t
        };
        KvCache {
            keys: (0..layers).map(|_| alloc()).collect(),
            values: (0..layers).map(|_| alloc()).collect(),
            block_size,
            num_blocks,
        }
    }

    /// Bytes one block takes across all layers, keys and values.
    pub fn bytes_per_block(layers: usize, block_size: usize, kv_heads: usize, head_dim: usize, kind: Kind) -> usize {
        2 * layers * block_size * kv_heads * head_dim * kind.elt_size_in_bytes()
    }

    /// Stores the new tokens' keys and values `[n, kv_heads, head_dim]` at `slots: [n]`.
    pub fn write(&mut self, layer: usize, slots: &Tensor, k: &Tensor, v: &Tensor) {
        let _ = self.keys[layer].index_copy_(0, slots, k);
        let _ = self.values[layer].index_copy_(0, slots, v);
    }

    /// One layer's key and value caches, to write into.
    pub fn layer_mut(&mut self, layer: usize) -> (&mut Tensor, &mut Tensor) {
        (&mut self.keys[layer], &mut self.values[layer])
    }

    pub fn keys(&self, layer: usize) -> &Tensor {
        &self.keys[layer]
    }

    pub fn values(&self, layer: usize) -> &Tensor {
        &self.values[layer]
    }
}
