//! How many KV-cache blocks the engine gets: the budget the flags gave (bytes, or on
//! CUDA a share of the device), in blocks of the loaded model's shape.

use anyhow::{Result, bail};
use tch::{Device, Kind};

use crate::config::{CPU_KV_CACHE_BYTES, EngineSettings, KvBudget};
use crate::engine::{BlockReuse, EngineConfig};
use crate::model::ModelInfo;
use crate::model::config::DecoderConfig;
use crate::model::kv_cache::KvCache;

/// Bytes for the KV cache: the budget's bytes; on CUDA, the share of the device that
/// `--gpu-memory-utilization` allows, less what is in use once the weights are loaded and
/// an estimate of the largest step's activations.
fn budget_bytes(engine: &EngineSettings, cfg: &DecoderConfig, kind: Kind, device: Device) -> Result<u64> {
    let util = match engine.kv_cache {
        KvBudget::Bytes(bytes) => return Ok(bytes),
        KvBudget::CpuDefault => return Ok(CPU_KV_CACHE_BYTES),
        KvBudget::GpuShare(util) => util,
    };
    if device == Device::Cpu {
        bail!("a share of GPU memory cannot size a KV cache on the CPU: give --kv-cache-memory");
    }
    let Some((free, total)) = crate::device::cuda_memory() else {
        bail!("cannot read the CUDA device's memory to size the KV cache: give --kv-cache-memory");
    };
    // A step's transient tensors: per batched token, the residual stream, attention
    // projections and the MLP's gate/up/act; per sequence, float32 logits and the sampler's
    // copies of them.
    let elt = kind.elt_size_in_bytes() as u64;
    let per_token = (6 * cfg.hidden_size + 3 * cfg.intermediate_size) as u64 * elt;
    let per_seq = 3 * 4 * cfg.vocab_size as u64;
    let sched = &engine.scheduler;
    let activations = sched.max_batched_tokens as u64 * per_token + sched.max_num_seqs as u64 * per_seq + (256 << 20);
    let allowed = (total as f64 * util) as u64;
    let used = total - free;
    let budget = allowed.saturating_sub(used).saturating_sub(activations);
    tracing::info!(
        "GPU memory: {:.2} GiB total, {:.2} GiB in use after loading, {:.2} GiB allowed (--gpu-memory-utilization {util}), \
         {:.2} GiB kept for activations",
        gib(total),
        gib(used),
        gib(allowed),
        gib(activations)
    );
    if budget == 0 {
        bail!("--gpu-memory-utilization {util} leaves no room for the KV cache on this device: raise it or give --kv-cache-memory");
    }
    Ok(budget)
}

/// How freed KV blocks are reused for a budget: the CPU's default pool is sized for the
/// worst case, so its resident part follows the load; a size the user gave, or CUDA's
/// resident pool, is the prefix cache's to fill.
pub fn block_reuse(budget: KvBudget) -> BlockReuse {
    match budget {
        KvBudget::CpuDefault => BlockReuse::ResidentFollowsLoad,
        KvBudget::Bytes(_) | KvBudget::GpuShare(_) => BlockReuse::CacheFillsPool,
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The engine's configuration for a loaded model: its KV blocks, scheduler, context
/// length and stop ids.
/// `kv_heads`: the KV heads this process holds (fewer than the model's when it is split).
pub fn engine_config(
    engine: &EngineSettings,
    cfg: &DecoderConfig,
    kv_heads: usize,
    kind: Kind,
    device: Device,
    info: &ModelInfo,
) -> Result<EngineConfig> {
    let budget = budget_bytes(engine, cfg, kind, device)?;
    let block_size = engine.block_size;
    let per_block = KvCache::bytes_per_block(cfg.num_layers, block_size, kv_heads, cfg.head_dim, kind);
    let num_blocks = (budget as usize) / per_block;
    let tokens = num_blocks.saturating_sub(1) * block_size; // block 0 is padding
    if tokens < info.max_model_len {
        bail!(
            "the KV cache ({budget} bytes) holds {tokens} tokens, fewer than the context length {}: raise --kv-cache-memory \
             (or --gpu-memory-utilization on CUDA) or lower --max-model-len",
            info.max_model_len
        );
    }
    tracing::info!("KV cache: {num_blocks} blocks of {block_size} tokens = {tokens} tokens ({:.2} GiB)", gib((num_blocks * per_block) as u64));
    Ok(EngineConfig {
        block_size,
        num_blocks,
        block_reuse: block_reuse(engine.kv_cache),
        scheduler: engine.scheduler.clone(),
        max_model_len: info.max_model_len,
        eos_ids: info.eos_ids.clone(),
    })
}
