//! encode_images: a vision model's images through its vision tower, between guide and the
//! engine, on this stage's own thread. It owns the tower (taken from the loaded model, so
//! the engine holds only the language model) and the encoder-output cache: the tower's
//! output of recent images by image hash, so an image sent again is not encoded again.
//! Each job with images leaves with its `MmPrompt` — the image embeddings, the row of each
//! placeholder token and the prompt's M-RoPE positions — and the engine only puts the
//! embeddings in their places at prefill. A large image therefore no longer stalls every
//! running sequence while the engine encodes it. Jobs without images pass through.

use std::sync::Mutex;

use crate::api::error::ApiError;
use crate::api::request::{Job, Prompt};
use crate::model::qwen2_vl::{EncoderCache, MmPrompt, VisionTower};
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};

/// Merged patches (image tokens) of recent images whose vision-tower output the stage
/// keeps: 8192 rows are ~25 MB for a 1536-wide model in bfloat16.
pub const ENCODER_CACHE_ROWS: usize = 8192;

pub struct EncodeImages {
    /// The tower and its cache; None for a model that takes no images (every job passes).
    vision: Option<Mutex<Vision>>,
}

struct Vision {
    tower: VisionTower,
    cache: EncoderCache,
}

impl EncodeImages {
    pub fn new(tower: Option<VisionTower>) -> Self {
        EncodeImages { vision: tower.map(|tower| Mutex::new(Vision { tower, cache: EncoderCache::new(ENCODER_CACHE_ROWS) })) }
    }
}

impl Stage<Item> for EncodeImages {
    fn process(&self, mut item: Item, out: &Outlet<Item>) {
        if let Payload::Job(job) = &mut item.payload {
            if !job.images.is_empty() {
                if item.ctx.is_cancelled() {
                    return;
                }
                if let Err(e) = self.encode(job) {
                    item.ctx.fail(e);
                    return;
                }
            }
        }
        let _ = out.send(item);
    }
}

impl EncodeImages {
    fn encode(&self, job: &mut Job) -> Result<(), ApiError> {
        let Some(vision) = &self.vision else {
            return Err(ApiError::bad_request("The served model takes no images."));
        };
        let Prompt::Tokens(prompts) = &job.prompt else {
            return Err(ApiError::internal("encode_images takes tokenized jobs (after tokenize in the pipeline file)"));
        };
        let [prompt] = prompts.as_slice() else {
            return Err(ApiError::internal("a chat with images has one prompt"));
        };
        let mut v = vision.lock().unwrap_or_else(|e| e.into_inner());
        let Vision { tower, cache } = &mut *v;
        let (hits, t0) = (cache.hits, std::time::Instant::now());
        // The placeholders were expanded to fit the images (media stage); a prompt where
        // they no longer do (cut by truncation) cannot run.
        let mm = MmPrompt::new(tower, prompt, &job.images, Some(cache))
            .map_err(|e| ApiError::invalid("messages", format!("The prompt's image placeholders do not fit its images: {e}")))?;
        tracing::debug!("{} images ({} cached) encoded in {:?}", job.images.len(), cache.hits - hits, t0.elapsed());
        job.mm = Some(Box::new(mm));
        // The pixels are no longer needed: the engine takes the embeddings.
        job.images.clear();
        Ok(())
    }
}
