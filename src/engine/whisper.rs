//! Whisper in the engine: an encoder-decoder request is one sequence per 30 s window of
//! its audio, each reading its own window's encoder output through cross-attention.
//!
//! - A request waits here (`AudioQueue`) until its windows can start. A window starts when
//!   one of the `max_windows` places is free: its encoder runs (every window started in
//!   the same step in one batch), its cross-attention keys and values are computed once
//!   and kept on the sequence (`AudioSeq`), shared by nothing else, and the place is given
//!   back when the sequence ends. `max_windows` comes from the KV budget (each place is
//!   one window's cross K/V and 448 tokens of self-attention blocks), so the block
//!   manager never runs short for Whisper and its sequences are never preempted.
//! - Without a language on a multilingual model, the first window first runs a one-token
//!   sequence from `<|startoftranscript|>` restricted to the language tokens (Whisper's
//!   language detection, as vLLM runs it); the detected token is written into every
//!   window's prompt, and the windows start with it, reusing the first window's encoder
//!   output.
//! - Each transcribing row gets Whisper's decoding rules (`DecodeRules`: suppressed
//!   tokens, timestamp rules) on its logits before the request's own processors and the
//!   sampler; logprobs stay those of the raw logits.

use std::collections::VecDeque;
use std::sync::Arc;


use tch::{Kind, Tensor};

use crate::model::batch::StepBatch;
use crate::model::kv_cache::KvCache;
use crate::model::whisper::Whisper;
use crate::model::whisper::decoder::CrossKv;
use crate::model::whisper::prompt;
use crate::model::whisper::rules::DecodeRules;
use crate::model::whisper::tokens::WhisperTokens;
use crate::sampling::SamplingParams;

use super::request::{Client, EngineRequest};

/// Windows encoded together at most, in one step.
pub const ENCODER_BATCH: usize = 8;

/// Whisper as the engine holds it.
pub struct WhisperEngine {
    pub net: Whisper,
    pub tokens: WhisperTokens,
    /// Windows whose cross-attention keys and values may be held at once.
    pub max_windows: usize,
}

impl WhisperEngine {
    /// One decoder step; `cross[i]` belongs to `batch.seqs[i]`.
    pub fn forward(&self, batch: &StepBatch, cache: &mut KvCache, cross: &[&CrossKv]) -> Tensor {
        // The engine keeps positions under max_target_positions and tokens in the vocabulary;
        // an error here is a bug, and the engine stage fails the step's requests.
        self.net.decoder.forward(batch, cache, cross).unwrap_or_else(|e| panic!("Whisper decoder step: {e}"))
    }

    /// Bytes one window's cross-attention keys and values take.
    pub fn cross_bytes_per_window(&self) -> usize {
        let c = &self.net.cfg;
        2 * c.decoder_layers * c.max_source_positions * c.d_model * self.net.dtype.elt_size_in_bytes()
    }

    /// The cross-attention inputs of windows of features (`[mels × frames]` each), in one
    /// encoder batch.
    pub fn encode(&self, windows: &[&[f32]]) -> Vec<CrossKv> {
        let _guard = tch::no_grad_guard();
        let c = &self.net.cfg;
        let (mels, frames) = (c.num_mel_bins as i64, c.num_frames() as i64);
        let feats: Vec<Tensor> = windows.iter().map(|w| Tensor::from_slice(w).view([1, mels, frames])).collect();
        let encoded = self.net.encode(&Tensor::cat(&feats, 0)).unwrap_or_else(|e| panic!("Whisper encoder: {e}"));
        (0..windows.len() as i64).map(|i| self.net.decoder.cross_kv(&encoded.get(i))).collect()
    }

    /// Whisper's rules on the rows of `logits: [rows, vocab]` whose entry is Some (its
    /// rules and the tokens it generated so far); None when no row has rules.
    pub fn apply_rules(logits: &Tensor, rows: &[Option<(&DecodeRules, &[u32])>]) -> Option<Tensor> {
        if rows.iter().all(Option::is_none) {
            return None;
        }
        let dev = logits.device();
        let mut all: Vec<Vec<f32>> =
            Vec::try_from(logits.to_kind(Kind::Float).to_device(tch::Device::Cpu)).expect("float32 logits");
        for (row, r) in all.iter_mut().zip(rows) {
            if let Some((rules, generated)) = r {
                rules.apply(generated, row);
            }
        }
        let flat: Vec<f32> = all.concat();
        Some(Tensor::from_slice(&flat).view([rows.len() as i64, -1]).to_device(dev))
    }
}

/// The encoder side of an encoder-decoder request: one window of audio features per
/// prompt of the request, in order.
#[derive(Debug, Clone, Default)]
pub struct EncoderInput {
    /// Log-mel features of each window, `[mels × frames]`, mel-major.
    pub windows: Vec<Vec<f32>>,
    /// Timestamp tokens on: the timestamp rules apply (the prompts lack `<|notimestamps|>`).
    pub timestamps: bool,
    /// Detect the language from the first window and write its token at this position of
    /// every prompt; None when the prompts already have it (or the model is English-only).
    pub detect_language_at: Option<usize>,
}

/// What a Whisper sequence carries besides its tokens. Its encoder output has one owner at
/// a time: the window's sequence (a language detection hands it to the first window's).
pub struct AudioSeq {
    pub cross: CrossKv,
    pub rules: Arc<DecodeRules>,
    pub role: Role,
    /// The sequence holds its window's place (given back when it ends).
    pub holds_window: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Transcribes (or translates) one window: its tokens go to the client.
    Transcribe,
    /// The one-token language detection before a request's windows start.
    DetectLanguage,
}

/// A window ready to start: what its sequence is built from, once its encoder has run.
pub struct Start {
    pub client: Arc<dyn Client>,
    pub params: Arc<SamplingParams>,
    pub priority: i64,
    pub window: usize,
    pub windows: usize,
    pub prompt: Vec<u32>,
    pub rules: Arc<DecodeRules>,
    pub role: Role,
    /// The window's features (the encoder has yet to run), or its encoder output already
    /// there (after language detection).
    pub input: StartInput,
}

pub enum StartInput {
    Features(Vec<f32>),
    Encoded(CrossKv),
}

/// Windows of one request that have not started, for `Abort` events.
pub struct Unstarted {
    pub client: Arc<dyn Client>,
    pub windows: usize,
    /// (window, its prompt's length) of every window not started.
    pub left: Vec<(usize, usize)>,
}

enum Language {
    /// In the prompts already (or not needed).
    Given,
    /// To detect from the first window, then write at this prompt position.
    Detect { at: usize },
    /// Being detected (by a sequence holding the first window's encoder output).
    Detecting { at: usize },
}

struct Queued {
    client: Arc<dyn Client>,
    sampling: Arc<SamplingParams>,
    detect: Arc<SamplingParams>,
    priority: i64,
    prompts: Vec<Vec<u32>>,
    features: Vec<Vec<f32>>,
    rules: Arc<DecodeRules>,
    /// The next window to start.
    next: usize,
    language: Language,
    detection_prompt: Vec<u32>,
}

impl Queued {
    fn unstarted(&self) -> Unstarted {
        Unstarted {
            client: self.client.clone(),
            windows: self.prompts.len(),
            left: (self.next..self.prompts.len()).map(|w| (w, self.prompts[w].len())).collect(),
        }
    }

    fn start(&mut self, window: usize, input: StartInput) -> Start {
        Start {
            client: self.client.clone(),
            params: self.sampling.clone(),
            priority: self.priority,
            window,
            windows: self.prompts.len(),
            prompt: std::mem::take(&mut self.prompts[window]),
            rules: self.rules.clone(),
            role: Role::Transcribe,
            input,
        }
    }
}

/// Whisper requests whose windows have not all started, in arrival order, and the
/// windows places in use.
#[derive(Default)]
pub struct AudioQueue {
    queue: VecDeque<Queued>,
    /// Windows whose sequence (or language detection) holds a place.
    pub held: usize,
}

impl AudioQueue {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Requests waiting for a window to start.
    pub fn waiting_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue.iter().map(|q| q.client.key())
    }

    /// Queues a request; its prompts are one per window of `input`.
    pub fn push(&mut self, req: EngineRequest, input: EncoderInput, tokens: &WhisperTokens) {
        let languages = tokens.language_ids();
        let detect = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(1),
            allowed_token_ids: Some(languages),
            ..SamplingParams::default()
        };
        self.queue.push_back(Queued {
            client: req.client,
            sampling: req.sampling,
            detect: Arc::new(detect),
            priority: req.priority,
            prompts: req.prompts,
            features: input.windows,
            rules: Arc::new(DecodeRules::new(tokens, input.timestamps)),
            next: 0,
            language: match input.detect_language_at {
                Some(at) if tokens.multilingual => Language::Detect { at },
                _ => Language::Given,
            },
            detection_prompt: prompt::language_detection_prompt(tokens),
        });
    }

    /// Up to `max` windows to start now, with `free` places free, in arrival order
    /// (a request waiting for its language lets the ones behind it go).
    pub fn pick(&mut self, mut free: usize, max: usize) -> Vec<Start> {
        let mut out = Vec::new();
        for q in self.queue.iter_mut() {
            if free == 0 || out.len() >= max {
                break;
            }
            match q.language {
                Language::Detecting { .. } => continue,
                Language::Detect { at } => {
                    q.language = Language::Detecting { at };
                    out.push(Start {
                        client: q.client.clone(),
                        params: q.detect.clone(),
                        priority: q.priority,
                        window: 0,
                        windows: q.prompts.len(),
                        prompt: q.detection_prompt.clone(),
                        rules: q.rules.clone(),
                        role: Role::DetectLanguage,
                        input: StartInput::Features(std::mem::take(&mut q.features[0])),
                    });
                    free -= 1;
                }
                Language::Given => {
                    while q.next < q.prompts.len() && free > 0 && out.len() < max {
                        let w = q.next;
                        let features = std::mem::take(&mut q.features[w]);
                        out.push(q.start(w, StartInput::Features(features)));
                        q.next += 1;
                        free -= 1;
                    }
                }
            }
        }
        self.held += out.len();
        self.queue.retain(|q| q.next < q.prompts.len());
        out
    }

    /// The language of `client`'s request is `token`: it goes into every prompt, and the
    /// first window starts at once on `first`, the encoder output the detection used (in
    /// the detection's place).
    pub fn detected(&mut self, key: u64, token: u32, first: CrossKv) -> Option<Start> {
        let q = self.queue.iter_mut().find(|q| q.client.key() == key)?;
        let Language::Detecting { at } = std::mem::replace(&mut q.language, Language::Given) else {
            return None;
        };
        for p in &mut q.prompts {
            if let Some(slot) = p.get_mut(at) {
                *slot = token;
            }
        }
        let start = q.start(0, StartInput::Encoded(first));
        q.next = 1;
        self.queue.retain(|q| q.next < q.prompts.len());
        Some(start)
    }

    /// A language detection ended without a language (its client left, or the step
    /// failed): the request is dropped, and its windows are returned to be aborted.
    pub fn drop_request(&mut self, key: u64) -> Option<Unstarted> {
        let at = self.queue.iter().position(|q| q.client.key() == key)?;
        let q = self.queue.remove(at)?;
        Some(q.unstarted())
    }

    /// Drops the requests whose client left (except those being detected: their detection
    /// sequence is reaped and drops them); returns their windows to abort.
    pub fn reap_cancelled(&mut self) -> Vec<Unstarted> {
        let mut gone = Vec::new();
        self.queue.retain(|q| {
            let cancelled = q.client.is_cancelled() && !matches!(q.language, Language::Detecting { .. });
            if cancelled {
                gone.push(q.unstarted());
            }
            !cancelled
        });
        gone
    }

    /// Every queued request, dropped (after a failed step).
    pub fn drain(&mut self) -> Vec<Unstarted> {
        self.queue.drain(..).map(|q| q.unstarted()).collect()
    }
}
