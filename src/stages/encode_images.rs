//! encode_images: a vision model's images through its vision tower, between guide and the
//! engine, on this stage's own thread. It owns the tower (taken from the loaded model, so
//! the engine holds only the language model) and the encoder-output cache: the tower's
//! output of recent images by image hash, so an image sent again is not encoded again.
//! Each job with images leaves with its `MmPrompt` — the image embeddings, the row of each
//! placeholder token and the prompt's M-RoPE positions — and the engine only puts the
//! embeddings in their places at prefill. A large image therefore no longer stalls every
//! running sequence while the engine encodes it.
//!
//! The worker hands jobs with images to an encoder thread of its own and passes every other
//! job straight on, so a text request never waits in line behind images being encoded
//! (only when `ENCODE_BACKLOG` image jobs are already waiting does the worker wait too).

use std::sync::Mutex;

use crate::api::error::ApiError;
use crate::api::request::{Job, Prompt};
use crate::model::qwen2_vl::{EncoderCache, MmPrompt, VisionTower};
use crate::pipeline::{Inlet, Outlet, Service, Stage};
use crate::stages::item::{Item, Payload};

/// Image jobs that may wait for the encoder thread before the stage's worker waits.
const ENCODE_BACKLOG: usize = 64;

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

fn has_images(item: &Item) -> bool {
    matches!(&item.payload, Payload::Job(job) if !job.images.is_empty())
}

impl Stage<Item> for EncodeImages {
    /// Jobs with images go to the encoder thread (their service runs from here until it
    /// hands them on); the others pass at once.
    fn run(&self, inlet: Inlet<Item>, out: Outlet<Item>) {
        let (tx, rx) = crossbeam_channel::bounded::<(Item, Service)>(ENCODE_BACKLOG);
        let (inlet, out) = (&inlet, &out);
        std::thread::scope(|scope| {
            let encoder = std::thread::Builder::new().name("encode-images".into()).spawn_scoped(scope, move || {
                for (item, service) in rx {
                    inlet.contain(item, |item| self.process(item, out));
                    inlet.end_service(service);
                }
            });
            // Without its thread (none could start), the worker encodes images itself.
            let inline = encoder.is_err();
            if let Err(e) = encoder {
                tracing::error!("encode_images: no encoder thread ({e}): images are encoded on the stage's worker");
            }
            while let Some(item) = inlet.recv() {
                let service = inlet.begin_service(&item);
                if has_images(&item) && !inline {
                    if tx.send((item, service)).is_err() {
                        return;
                    }
                } else {
                    inlet.contain(item, |item| self.process(item, out));
                    inlet.end_service(service);
                }
            }
            drop(tx);
        });
    }

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
