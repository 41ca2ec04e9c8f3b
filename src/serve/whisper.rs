//! A Whisper model behind the engine (`--task transcription`): the network and its
//! tokens loaded, the KV budget cut into window places, the audio stage's feature
//! extractor and prompt builder, and the serving context the audio APIs validate against.
//!
//! Memory: every window in the engine holds its cross-attention keys and values (the
//! encoder output projected for each decoder layer: 18 MB for tiny.en in float32) and up
//! to 448 tokens of self-attention blocks. The budget (`--kv-cache-memory`, or on CUDA the
//! share `--gpu-memory-utilization` leaves) is divided into places of that size; windows
//! beyond them wait in the engine until a place frees, so the blocks never run short and
//! no Whisper sequence is ever preempted. The prefix cache is off: every window's keys
//! depend on its audio, so equal prompts never share blocks.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use tch::Device;

use crate::api::context::ServingContext;
use crate::audio::features::FeatureExtractor;
use crate::config::{CPU_KV_CACHE_BYTES, KvBudget, ServeConfig};
use crate::engine::whisper::WhisperEngine;
use crate::engine::{Engine, EngineConfig};
use crate::model::{self, ModelInfo, whisper};
use crate::pipeline::Catalog;
use crate::stages::{self, audio::AudioPrep};

use super::assemble::Assembled;

/// Loads the Whisper folder and binds the transcription pipeline's stages to it.
pub(super) fn transcriber(cfg: &ServeConfig, catalog: Catalog, t0: Instant, control: &crate::stages::Control) -> Result<Assembled> {
    let dir = cfg.location.path().to_owned();
    let loaded = model::on_passing_thread(|| whisper::load(&dir, &cfg.dtype, cfg.device))?;
    tracing::info!(
        "loaded in {:.1}s: {} ({:?} folder), {}, device {:?}",
        t0.elapsed().as_secs_f64(),
        loaded.model.describe(),
        loaded.format,
        if loaded.tokens.multilingual { format!("{} languages", loaded.tokens.languages.len()) } else { "English only".into() },
        cfg.device
    );
    let positions = loaded.model.cfg.max_target_positions;
    let max_model_len = match cfg.max_model_len {
        Some(n) if n == 0 || n > positions => bail!("--max-model-len must be between 1 and the decoder's {positions} positions"),
        Some(n) => n,
        None => positions,
    };
    let tokens = Arc::new(loaded.tokens);
    let info = ModelInfo {
        tokenizer: loaded.tokenizer.clone(),
        chat_template: None,
        generation_config: None,
        eos_ids: vec![tokens.eot],
        max_model_len,
        location: cfg.location.clone(),
    };
    let mut serving = ServingContext::new(&info, cfg.serving.served_names.clone(), None, None);
    serving.log_requests = cfg.serving.log_requests;
    serving.max_logprobs = cfg.serving.max_logprobs;
    serving.whisper = Some(tokens.clone());
    let serving = Arc::new(serving);

    let engine_model = WhisperEngine { net: loaded.model, tokens: (*tokens).clone(), max_windows: 0 };
    let (engine_cfg, max_windows) = engine_config(cfg, &engine_model, max_model_len)?;
    let engine = Engine::new(WhisperEngine { max_windows, ..engine_model }, engine_cfg);
    let stats = engine.stats();
    let prep = Arc::new(AudioPrep {
        features: FeatureExtractor::new(loaded.mel),
        tokens,
        tokenizer: loaded.tokenizer,
        max_target_positions: positions,
    });
    Ok((stages::transcription_registry(catalog, serving.clone(), engine, prep, control), serving, stats))
}

/// The engine's blocks and how many windows it holds at once.
fn engine_config(cfg: &ServeConfig, w: &WhisperEngine, max_model_len: usize) -> Result<(EngineConfig, usize)> {
    let block_size = cfg.engine.block_size;
    let blocks_per_window = max_model_len.div_ceil(block_size);
    let per_block = w.net.decoder.cache_bytes_per_block(block_size);
    let per_window = w.cross_bytes_per_window() + blocks_per_window * per_block;
    let budget = budget_bytes(cfg, w)?;
    let fit = (budget / per_window as u64) as usize;
    if fit == 0 {
        bail!(
            "the KV budget ({budget} bytes) holds no Whisper window ({per_window} bytes each: its cross-attention keys and \
             values and {max_model_len} tokens of self-attention): raise --kv-cache-memory (or --gpu-memory-utilization on CUDA)"
        );
    }
    let sched = &cfg.engine.scheduler;
    let windows = fit.min(sched.max_num_seqs);
    let num_blocks = 1 + windows * blocks_per_window;
    tracing::info!(
        "KV budget: {windows} windows at once ({:.1} MiB each: cross-attention {:.1} MiB, self-attention {} blocks of {block_size} tokens)",
        per_window as f64 / (1 << 20) as f64,
        w.cross_bytes_per_window() as f64 / (1 << 20) as f64,
        blocks_per_window
    );
    let scheduler = crate::engine::scheduler::SchedulerConfig { prefix_caching: false, ..sched.clone() };
    let eos_ids = vec![w.tokens.eot];
    let block_reuse = super::kv::block_reuse(cfg.engine.kv_cache);
    Ok((EngineConfig { block_size, num_blocks, block_reuse, scheduler, max_model_len, eos_ids }, windows))
}

/// Bytes for windows: `--kv-cache-memory`; on CUDA without it, the share of the device
/// `--gpu-memory-utilization` allows less what is in use, and less the encoder's
/// activations for a full batch of windows (an estimate: its attention scores, in float32).
fn budget_bytes(cfg: &ServeConfig, w: &WhisperEngine) -> Result<u64> {
    match cfg.engine.kv_cache {
        KvBudget::Bytes(b) => Ok(b),
        KvBudget::CpuDefault => Ok(CPU_KV_CACHE_BYTES),
        KvBudget::GpuShare(util) => {
            if cfg.device == Device::Cpu {
                bail!("a share of GPU memory cannot size a KV cache on the CPU: give --kv-cache-memory");
            }
            let Some((free, total)) = crate::device::cuda_memory() else {
                bail!("cannot read the CUDA device's memory to size the KV cache: give --kv-cache-memory");
            };
            let c = &w.net.cfg;
            let s = c.max_source_positions as u64;
            let encoder = crate::engine::whisper::ENCODER_BATCH as u64 * (c.encoder_heads as u64 * s * s * 4 + 8 * s * c.d_model as u64 * 4);
            let allowed = (total as f64 * util) as u64;
            Ok(allowed.saturating_sub(total - free).saturating_sub(encoder + (256 << 20)))
        }
    }
}
