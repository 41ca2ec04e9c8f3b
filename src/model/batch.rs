//! One forward step's input: the tokens of many sequences laid end to end, with where
//! each sequence's keys and values live in the paged cache.

/// One sequence's part of a step.
#[derive(Debug, Clone)]
pub struct SeqChunk {
    /// Tokens fed this step (a prompt chunk, or the one token being decoded).
    pub tokens: Vec<u32>,
    /// Tokens already in the cache before this step (the position of `tokens[0]`).
    pub cached: usize,
    /// Cache blocks holding this sequence, in order; must cover `cached + tokens.len()`.
    pub block_table: Vec<u32>,
    /// Rows (offsets into `tokens`) whose logits the caller wants back.
    pub logits_for: Vec<usize>,
    /// The sequence's prompt length (LongRoPE models pick their frequencies by it).
    pub prompt_len: usize,
}

impl SeqChunk {
    pub fn context_len(&self) -> usize {
        self.cached + self.tokens.len()
    }
}

/// The flat arrays a forward pass needs, computed once per step.
#[derive(Debug, Default)]
pub struct StepBatch {
    pub tokens: Vec<i64>,
    pub positions: Vec<i64>,
    /// Cache slot each new token's K/V is written to.
    pub slots: Vec<i64>,
    /// Flat rows whose logits are returned, in order.
    pub logits_rows: Vec<i64>,
    pub seqs: Vec<SeqSpan>,
    /// M-RoPE positions (time, height, width) of every token, once a sequence with images
    /// is in the batch (`add_images`); otherwise each token's three are `positions`.
    pub mrope: Option<[Vec<i64>; 3]>,
    /// Rows whose input embedding is an image's (`image_embeds`, concatenated, in order)
    /// instead of their token's.
    pub image_rows: Vec<i64>,
    pub image_embeds: Vec<tch::Tensor>,
}

/// Where one sequence sits in the flat batch and in the cache.
#[derive(Debug, Clone)]
pub struct SeqSpan {
    pub row: usize,
    pub len: usize,
    pub context_len: usize,
    /// Cache slots of the whole context, `context_len` of them.
    pub context_slots: Vec<i64>,
    /// The length a LongRoPE model judges this step's tokens by: the prompt's or the
    /// context's, whichever is longer (so a long prompt's chunks all take the long set).
    pub rope_len: usize,
}

impl StepBatch {
    pub fn new(chunks: &[SeqChunk], block_size: usize) -> Self {
        let mut b = StepBatch::default();
        for c in chunks {
            let row = b.tokens.len();
            let ctx = c.context_len();
            assert!(c.block_table.len() * block_size >= ctx, "block table too short for context");
            let slot = |p: usize| (c.block_table[p / block_size] as usize * block_size + p % block_size) as i64;
            for (i, &t) in c.tokens.iter().enumerate() {
                let p = c.cached + i;
                b.tokens.push(t as i64);
                b.positions.push(p as i64);
                b.slots.push(slot(p));
            }
            b.logits_rows.extend(c.logits_for.iter().map(|&r| (row + r) as i64));
            b.seqs.push(SeqSpan {
                row,
                len: c.tokens.len(),
                context_len: ctx,
                context_slots: (0..ctx).map(slot).collect(),
                rope_len: ctx.max(c.prompt_len),
            });
        }
        b
    }

    /// Sequence `i` of the batch has images: its tokens take their M-RoPE positions and
    /// their placeholders the images' embeddings.
    pub fn add_images(&mut self, i: usize, mm: &super::qwen2_vl::MmPrompt) {
        let span = &self.seqs[i];
        let first = span.context_len - span.len;
        let positions = &self.positions;
        let axes = self.mrope.get_or_insert_with(|| std::array::from_fn(|_| positions.clone()));
        let prompt_len = mm.prompt_len();
        let mut rows = Vec::new();
        for j in 0..span.len {
            let (p, row) = (first + j, span.row + j);
            for (a, axis) in axes.iter_mut().enumerate() {
                axis[row] = if p < prompt_len { mm.positions[a][p] } else { p as i64 + mm.delta };
            }
            if p < prompt_len && mm.embed_row[p] >= 0 {
                self.image_rows.push(row as i64);
                rows.push(mm.embed_row[p]);
            }
        }
        if !rows.is_empty() {
            let idx = tch::Tensor::from_slice(&rows).to_device(mm.embeds.device());
            self.image_embeds.push(mm.embeds.index_select(0, &idx));
        }
    }
}
