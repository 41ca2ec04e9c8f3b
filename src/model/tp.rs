//! Tensor parallelism (Megatron's split) of the Llama-family decoders: which part of each
//! weight a rank holds, the step plan rank 0 sends the others, and the loop the others run.
//!
//! Each of N ranks holds H/N query heads and the matching key/value heads (its share of the
//! KV heads when they divide by N; otherwise, when N is a multiple of them, the one KV head
//! its query heads read, replicated across N/KVH ranks, as vLLM does), 1/N of the MLP's
//! intermediate rows, and 1/N of the vocabulary of the embedding and the LM head.
//! Column-parallel projections (q/k/v, gate/up) need no communication; the row-parallel
//! ones (o, down) end with an all-reduce, as does the embedding lookup; the logits are
//! all-gathered. Norms and the residual stream are replicated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::batch::{SeqSpan, StepBatch};
use super::config::{Arch, DecoderConfig};
use crate::dist::Group;

/// This process's place in a tensor-parallel group.
#[derive(Clone)]
pub struct Shard {
    pub group: Arc<Group>,
    pub rank: usize,
    pub world: usize,
    /// Rank 0's steps: how many, their time, and the part of it spent communicating.
    pub stats: Arc<TpStats>,
}

impl Shard {
    pub fn new(group: Arc<Group>) -> Self {
        let (rank, world) = (group.rank, group.world);
        Shard { group, rank, world, stats: Arc::default() }
    }
}

/// Rank 0's forward passes, summed: what the log reports when the server stops.
#[derive(Debug, Default)]
pub struct TpStats {
    steps: AtomicU64,
    step_ns: AtomicU64,
    comm_ns: AtomicU64,
}

impl TpStats {
    /// One step of `step` in all, `comm` of it sending the plan, all-reducing and gathering.
    pub fn record(&self, step: Duration, comm: Duration) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_ns.fetch_add(step.as_nanos() as u64, Ordering::Relaxed);
        self.comm_ns.fetch_add(comm.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Steps, mean forward time per step, and the communication's share of it.
    pub fn summary(&self) -> (u64, Duration, f64) {
        let steps = self.steps.load(Ordering::Relaxed);
        let (step, comm) = (self.step_ns.load(Ordering::Relaxed), self.comm_ns.load(Ordering::Relaxed));
        let mean = Duration::from_nanos(step.checked_div(steps).unwrap_or(0));
        (steps, mean, if step == 0 { 0.0 } else { comm as f64 / step as f64 })
    }
}

/// The heads and rows one rank holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Query heads: `q_heads` of them from `q_first`.
    pub q_first: usize,
    pub q_heads: usize,
    /// KV heads: `kv_heads` from `kv_first`.
    pub kv_first: usize,
    pub kv_heads: usize,
    /// MLP intermediate rows from `mlp_first`, `mlp_rows` of them.
    pub mlp_first: usize,
    pub mlp_rows: usize,
    /// Vocabulary rows from `vocab_first`: `vocab_rows` real ones, padded to `vocab_shard`
    /// (every rank's shard is that long, so the logits gather in equal parts).
    pub vocab_first: usize,
    pub vocab_rows: usize,
    pub vocab_shard: usize,
}

/// Whether `n` ranks can split the model: query heads and the MLP divide by `n`, and KV
/// heads divide by `n` or `n` by them.
fn splits(cfg: &DecoderConfig, n: usize) -> bool {
    let (h, kvh) = (cfg.num_heads, cfg.num_kv_heads);
    n >= 1 && h % n == 0 && cfg.intermediate_size % n == 0 && (kvh % n == 0 || n % kvh == 0)
}

/// Rank `rank`'s part of a model split `n` ways, or why it cannot be split so.
pub fn split(cfg: &DecoderConfig, rank: usize, n: usize) -> Result<Split, String> {
    if !matches!(cfg.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2) {
        return Err(format!(
            "--tensor-parallel-size {n}: tensor parallelism covers the Llama family (Llama, Mistral, Qwen2), not {:?}",
            cfg.arch
        ));
    }
    if cfg.moe.is_some() || cfg.vision.is_some() || cfg.fused_projections {
        return Err(format!("--tensor-parallel-size {n}: this model's experts, vision tower or fused projections are not split"));
    }
    if !splits(cfg, n) {
        let ok: Vec<String> = (1..=cfg.num_heads).filter(|&m| splits(cfg, m)).map(|m| m.to_string()).collect();
        return Err(format!(
            "--tensor-parallel-size {n} cannot split this model ({} attention heads, {} KV heads, MLP width {}): \
             it needs a divisor of the head count that also divides the MLP width, with the KV heads divisible by it \
             or it by them; sizes that work: {}",
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
            ok.join(", ")
        ));
    }
    let (h, kvh) = (cfg.num_heads, cfg.num_kv_heads);
    let q_heads = h / n;
    let (kv_first, kv_heads) = if kvh % n == 0 { (rank * (kvh / n), kvh / n) } else { (rank / (n / kvh), 1) };
    let mlp_rows = cfg.intermediate_size / n;
    let vocab_shard = cfg.vocab_size.div_ceil(n);
    let vocab_first = (rank * vocab_shard).min(cfg.vocab_size);
    Ok(Split {
        q_first: rank * q_heads,
        q_heads,
        kv_first,
        kv_heads,
        mlp_first: rank * mlp_rows,
        mlp_rows,
        vocab_first,
        vocab_rows: vocab_shard.min(cfg.vocab_size - vocab_first),
        vocab_shard,
    })
}

/// Whether the model at `location` can be split `n` ways (read from its config alone,
/// before any rank loads weights).
pub fn check(location: &super::resolve::ModelLocation, n: usize) -> Result<(), String> {
    let cfg = match &location.format {
        super::resolve::Format::Gguf(path) => {
            let file = super::gguf::GgufFile::open(path).map_err(|e| e.to_string())?;
            DecoderConfig::from_gguf(&file)?
        }
        super::resolve::Format::HfDir(dir) => {
            let json = location.config().map_err(|e| e.to_string())?.ok_or_else(|| format!("{}: no config.json", dir.display()))?;
            DecoderConfig::from_hf(&json)?
        }
    };
    split(&cfg, 0, n).map(|_| ())
}

/// What rank 0 sends the others, one message each.
#[derive(Debug)]
pub enum Command {
    /// Nothing to do: rank 0 is idle and alive.
    Heartbeat,
    /// The KV cache to allocate: `num_blocks` blocks of `block_size` tokens.
    Cache { num_blocks: usize, block_size: usize },
    /// Run one forward step.
    Step(Box<StepBatch>),
    /// Rank 0 is stopping: end.
    Stop,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let w: Vec<i64> = match self {
            Command::Heartbeat => vec![0],
            Command::Cache { num_blocks, block_size } => vec![1, *num_blocks as i64, *block_size as i64],
            Command::Step(b) => return step_message(b),
            Command::Stop => vec![3],
        };
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        if bytes.len() % 8 != 0 {
            return Err(format!("a command of {} bytes", bytes.len()));
        }
        let words: Vec<i64> = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let mut r = Reader { w: &words, at: 0 };
        let cmd = match r.next()? {
            0 => Command::Heartbeat,
            1 => Command::Cache { num_blocks: r.next()? as usize, block_size: r.next()? as usize },
            2 => {
                let mut b = StepBatch { tokens: r.list()?, positions: r.list()?, slots: r.list()?, logits_rows: r.list()?, ..Default::default() };
                for _ in 0..r.next()? {
                    let (row, len, rope_len) = (r.next()? as usize, r.next()? as usize, r.next()? as usize);
                    let context_slots = r.list()?;
                    b.seqs.push(SeqSpan { row, len, context_len: context_slots.len(), context_slots, rope_len });
                }
                Command::Step(Box::new(b))
            }
            3 => Command::Stop,
            t => return Err(format!("unknown command {t}")),
        };
        if r.at != words.len() {
            return Err("trailing words after a command".into());
        }
        Ok(cmd)
    }
}

/// `Command::Step(batch)` as sent, without giving up `batch`.
pub fn step_message(b: &StepBatch) -> Vec<u8> {
    assert!(b.mrope.is_none() && b.image_rows.is_empty(), "a tensor-parallel step has no images");
    let mut w: Vec<i64> = vec![2];
    for list in [&b.tokens, &b.positions, &b.slots, &b.logits_rows] {
        w.push(list.len() as i64);
        w.extend_from_slice(list);
    }
    w.push(b.seqs.len() as i64);
    for s in &b.seqs {
        w.extend([s.row as i64, s.len as i64, s.rope_len as i64, s.context_slots.len() as i64]);
        w.extend_from_slice(&s.context_slots);
    }
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct Reader<'a> {
    w: &'a [i64],
    at: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> Result<i64, String> {
        let v = *self.w.get(self.at).ok_or("a command cut short")?;
        self.at += 1;
        Ok(v)
    }

    fn list(&mut self) -> Result<Vec<i64>, String> {
        let n = self.next()?;
        if n < 0 || self.at + n as usize > self.w.len() {
            return Err("a command cut short".into());
        }
        let out = self.w[self.at..self.at + n as usize].to_vec();
        self.at += n as usize;
        Ok(out)
    }
}

/// How long a follower waits for rank 0's next message before it takes rank 0 for gone
/// (rank 0 sends a heartbeat every `HEARTBEAT` while idle).
pub const IDLE_WAIT: Duration = Duration::from_secs(60);
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A rank other than 0: takes rank 0's commands and runs its shard of every step until
/// rank 0 says stop (Ok) or the group fails (Err).
pub fn follow(decoder: &super::decoder::Decoder) -> Result<(), String> {
    let shard = decoder.shard().ok_or("follow: the decoder is not sharded")?;
    let group = &shard.group;
    let mut cache = None;
    // The first message (the cache's size) waits for rank 0 to load its shard.
    let mut wait = Duration::from_secs(3600);
    loop {
        let msg = group.recv_message(wait).map_err(|e| format!("waiting for rank 0: {e}"))?;
        wait = IDLE_WAIT;
        match Command::decode(&msg)? {
            Command::Heartbeat => {}
            Command::Cache { num_blocks, block_size } => {
                tracing::info!("rank {}: KV cache of {num_blocks} blocks of {block_size} tokens", shard.rank);
                cache = Some(decoder.new_cache(num_blocks, block_size));
            }
            Command::Step(batch) => {
                let cache = cache.as_mut().ok_or("a step before the cache was sized")?;
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.forward_shard(&batch, cache, &mut None)));
                if let Err(p) = run {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    return Err(format!("a step failed: {}", msg.unwrap_or_default()));
                }
            }
            Command::Stop => return Ok(()),
        }
    }
}

/// Rank 0: tells the others the KV cache's size (waiting as long as they take to load).
pub fn announce_cache(shard: &Shard, num_blocks: usize, block_size: usize) -> Result<(), String> {
    let _turn = shard.group.turn();
    shard
        .group
        .send_message(&Command::Cache { num_blocks, block_size }.encode(), Some(Duration::from_secs(3600)))
        .map_err(|e| format!("sizing the other ranks' KV caches: {e}"))
}

/// Rank 0: tells the others to end.
pub fn stop(group: &Group) {
    let _turn = group.turn();
    let _ = group.send_message(&Command::Stop.encode(), Some(Duration::from_secs(5)));
}

/// Rank 0: a thread that sends a heartbeat every `HEARTBEAT` while no step runs, so that
/// the others know rank 0 lives and rank 0 learns early of a rank that went away; on a
/// failure it calls `failed` once and ends.
pub fn heartbeat(shard: &Shard, failed: impl Fn(String) + Send + 'static) {
    let group = shard.group.clone();
    std::thread::Builder::new()
        .name("tp-heartbeat".into())
        .spawn(move || {
            let msg = Command::Heartbeat.encode();
            loop {
                std::thread::sleep(HEARTBEAT);
                if group.is_broken() {
                    return;
                }
                let Some(_turn) = group.try_turn() else { continue };
                if let Err(e) = group.send_message(&msg, None) {
                    failed(format!("tensor-parallel heartbeat: {e}"));
                    return;
                }
            }
        })
        .expect("a thread");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::SeqChunk;

    fn cfg(h: usize, kvh: usize, inter: usize, vocab: usize) -> DecoderConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": h * 16,
            "intermediate_size": inter, "num_hidden_layers": 2, "num_attention_heads": h,
            "num_key_value_heads": kvh, "max_position_embeddings": 64, "rms_norm_eps": 1e-5
        });
        DecoderConfig::from_hf(&json).unwrap()
    }

    #[test]
    fn heads_rows_and_vocabulary_are_shared_out() {
        let c = cfg(4, 2, 64, 101);
        let s: Vec<Split> = (0..2).map(|r| split(&c, r, 2).unwrap()).collect();
        assert_eq!((s[1].q_first, s[1].q_heads, s[1].kv_first, s[1].kv_heads), (2, 2, 1, 1));
        assert_eq!((s[1].mlp_first, s[1].mlp_rows), (32, 32));
        assert_eq!((s[0].vocab_first, s[0].vocab_rows, s[1].vocab_first, s[1].vocab_rows, s[1].vocab_shard), (0, 51, 51, 50, 51));
        // 4 ranks, 2 KV heads: each KV head is held by two ranks, the ones whose queries read it.
        let kv: Vec<(usize, usize)> = (0..4).map(|r| split(&c, r, 4).map(|s| (s.kv_first, s.kv_heads)).unwrap()).collect();
        assert_eq!(kv, vec![(0, 1), (0, 1), (1, 1), (1, 1)]);
    }

    #[test]
    fn a_size_that_does_not_divide_is_refused_with_the_sizes_that_do() {
        // SmolLM2-135M's shape: 9 heads, 3 KV heads.
        let err = split(&cfg(9, 3, 1536, 49152), 0, 2).unwrap_err();
        assert!(err.contains("--tensor-parallel-size 2 cannot split") && err.ends_with("sizes that work: 1, 3"), "{err}");
        assert!(split(&cfg(9, 3, 1536, 49152), 0, 3).is_ok());
    }

    #[test]
    fn commands_survive_the_wire() {
        let chunks = [
            SeqChunk { tokens: vec![5, 6, 7], cached: 0, block_table: vec![1, 2], logits_for: vec![2], prompt_len: 3 },
            SeqChunk { tokens: vec![9], cached: 17, block_table: vec![3, 4, 5], logits_for: vec![0], prompt_len: 10 },
        ];
        let b = StepBatch::new(&chunks, 16);
        let Command::Step(back) = Command::decode(&Command::Step(Box::new(StepBatch::new(&chunks, 16))).encode()).unwrap() else {
            panic!("not a step")
        };
        assert_eq!((&back.tokens, &back.positions, &back.slots, &back.logits_rows), (&b.tokens, &b.positions, &b.slots, &b.logits_rows));
        for (x, y) in back.seqs.iter().zip(&b.seqs) {
            assert_eq!((x.row, x.len, x.context_len, &x.context_slots, x.rope_len), (y.row, y.len, y.context_len, &y.context_slots, y.rope_len));
        }
        assert!(matches!(Command::decode(&Command::Cache { num_blocks: 7, block_size: 16 }.encode()), Ok(Command::Cache { num_blocks: 7, block_size: 16 })));
        assert!(Command::decode(&Command::Step(Box::new(b)).encode()[..40]).is_err());
    }
}
