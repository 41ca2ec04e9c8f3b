//! The engine: owns the model and the KV cache, and advances every admitted sequence one
//! step at a time — schedule, one batched forward pass, sample — reporting new tokens as
//! they come.

pub mod beam;
pub mod blocks;
pub mod latency;
pub mod model;
pub mod prefix;
pub mod request;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod whisper;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use crate::guided::{GuideState, TokenMask};
use crate::model::batch::{SeqChunk, StepBatch};
use crate::model::kv_cache::KvCache;
use crate::model::whisper::decoder::CrossKv;
use crate::sampling::processors::{self, RowContext};
use crate::sampling::{self, SampleRow};
use blocks::BlockManager;
pub use blocks::BlockReuse;
use model::EngineModel;
pub use request::{Client, EncoderInput, EngineError, EngineEvent, EngineRequest, Finish, StopReason, TokenEvent};
use scheduler::{Scheduler, SchedulerConfig};
use sequence::{SeqId, Sequence};
use stats::EngineStats;
use whisper::{AudioQueue, AudioSeq, Role, Start, StartInput, Unstarted};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub block_reuse: BlockReuse,
    pub scheduler: SchedulerConfig,
    pub max_model_len: usize,
    pub eos_ids: Vec<u32>,
}

/// Time spent in each part of a step, for profiles.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepTimes {
    pub schedule: Duration,
    /// Encoder-decoder models: the encoder runs of windows started this step.
    pub encode: Duration,
    pub forward: Duration,
    pub sample: Duration,
    pub tokens: usize,
    pub seqs: usize,
}

pub struct Engine {
    model: EngineModel,
    cache: KvCache,
    blocks: BlockManager,
    sched: Scheduler,
    pub cfg: EngineConfig,
    next_id: SeqId,
    stats: Arc<EngineStats>,
    /// Beam-search groups by the id of the group (see `beam`), and each beam's group.
    beams: std::collections::HashMap<u64, beam::BeamGroup>,
    beam_of: std::collections::HashMap<SeqId, u64>,
    /// Whisper requests whose windows have not all started.
    audio: AudioQueue,
}

impl Engine {
    pub fn new(model: impl Into<EngineModel>, cfg: EngineConfig) -> Self {
        let model = model.into();
        let cache = model.new_cache(cfg.num_blocks, cfg.block_size);
        Engine {
            blocks: BlockManager::new(cfg.num_blocks, cfg.block_size, cfg.block_reuse),
            cache,
            model,
            sched: Scheduler::default(),
            cfg,
            next_id: 1,
            stats: Arc::default(),
            beams: Default::default(),
            beam_of: Default::default(),
            audio: AudioQueue::default(),
        }
    }

    /// The figures this engine publishes after every change (for `/metrics`).
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let requests = |ids: &[SeqId]| {
            ids.iter()
                .filter_map(|id| self.sched.get(*id))
                .map(|s| s.client.key())
                .collect::<std::collections::HashSet<_>>()
                .len() as u64
        };
        let s = &self.stats;
        s.requests_running.store(requests(self.sched.running()), Relaxed);
        let mut waiting: std::collections::HashSet<u64> =
            self.sched.waiting().iter().filter_map(|id| self.sched.get(*id)).map(|s| s.client.key()).collect();
        waiting.extend(self.audio.waiting_keys());
        s.requests_waiting.store(waiting.len() as u64, Relaxed);
        s.set_kv_usage(self.cache_usage());
        s.preemptions.store(self.sched.preemptions, Relaxed);
        s.prefix_queries.store(self.sched.prefix_queries, Relaxed);
        s.prefix_hits.store(self.sched.prefix_hits, Relaxed);
    }

    pub fn is_idle(&self) -> bool {
        self.sched.is_idle() && self.audio.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.sched.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.sched.num_waiting() + self.audio.waiting_keys().count()
    }

    /// Fraction of KV blocks in use.
    pub fn cache_usage(&self) -> f64 {
        1.0 - self.blocks.num_free() as f64 / self.blocks.num_blocks() as f64
    }

    pub fn free_blocks(&self) -> usize {
        self.blocks.num_free()
    }

    /// Admits a request: one sequence per prompt and choice.
    pub fn admit(&mut self, mut job: EngineRequest) {
        job.client.timeline().mark_admitted(Instant::now());
        let prompt_tokens: usize = job.prompts.iter().map(Vec::len).sum();
        self.stats.prompt_tokens.fetch_add(prompt_tokens as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = self.model.whisper() {
            // Its windows start as places free up (`start_windows`).
            let input = job.encoder.take().unwrap_or_default();
            if input.windows.len() != job.prompts.len() || job.n != 1 || job.beam.is_some() {
                tracing::error!("request {}: a Whisper request needs one window per prompt and one choice", job.client.id());
                job.client.send(EngineEvent::Failed(EngineError::StepFailed));
                for (w, p) in job.prompts.iter().enumerate() {
                    job.client.send(EngineEvent::Tokens(unstarted_event(w, job.prompts.len(), p.len())));
                }
                return;
            }
            self.audio.push(job, input, &w.tokens);
            self.publish();
            return;
        }
        let mm = match self.take_images(&mut job) {
            Ok(mm) => mm,
            Err(()) => {
                job.client.send(EngineEvent::Failed(EngineError::StepFailed));
                for (p, ids) in job.prompts.iter().enumerate() {
                    for j in 0..job.n {
                        let mut ev = unstarted_event(p * job.n + j, job.prompts.len() * job.n, ids.len());
                        ev.prompt_index = p;
                        job.client.send(EngineEvent::Tokens(ev));
                    }
                }
                return;
            }
        };
        let prompts = &job.prompts;
        let client = &job.client;
        let choices = prompts.len() * job.n;
        // Beam search starts one sequence per prompt; its `n` beams come out at the end.
        let per_prompt = if job.beam.is_some() { 1 } else { job.n };
        for (p, ids) in prompts.iter().enumerate() {
            let prompt = Arc::new(ids.clone());
            let room = self.cfg.max_model_len.saturating_sub(ids.len());
            let max_new = job.sampling.max_tokens.map_or(room, |m| m.min(room));
            for j in 0..per_prompt {
                let choice = p * job.n + j;
                let seed = match job.sampling.seed {
                    Some(s) => s.wrapping_add(choice as u64),
                    None => crate::ids::splitmix(client.key() ^ (self.next_id << 20) ^ now_nanos()),
                };
                let seq = Sequence {
                    id: self.next_id,
                    client: client.clone(),
                    choice,
                    prompt_index: p,
                    choices,
                    prompt: prompt.clone(),
                    output: Vec::new(),
                    params: job.sampling.clone(),
                    max_new,
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    blocks: Vec::new(),
                    computed: 0,
                    hashes: Vec::new(),
                    salt: prefix::chain_start(job.cache_salt.as_deref()) ^ self.model.prefix_salt(prompt.len()),
                    priority: job.priority,
                    arrival: client.timeline().arrived(),
                    prompt_logprobs: Vec::new(),
                    announced: false,
                    guide: job.guide.as_ref().map(|g| g.start_after(&job.guide_after)),
                    audio: None,
                    mm: mm.clone(),
                };
                self.next_id += 1;
                if let Some(params) = job.beam {
                    let group = seq.id;
                    self.beams.insert(group, beam::BeamGroup::new(params, job.sampling.ignore_eos, &seq));
                    self.beam_of.insert(seq.id, group);
                }
                self.sched.add(seq);
            }
        }
        self.publish();
    }

    /// A request's images, already encoded (the encode_images stage) with the prompt's
    /// M-RoPE positions. A request whose images do not fit its prompt (or that has images
    /// for a model without M-RoPE) is refused here and logged.
    fn take_images(&mut self, job: &mut EngineRequest) -> Result<Option<Box<crate::model::qwen2_vl::MmPrompt>>, ()> {
        let Some(mm) = job.mm.take() else { return Ok(None) };
        let mrope = match &self.model {
            EngineModel::Decoder(d) => d.cfg.mrope_section.is_some(),
            EngineModel::Whisper(_) => false,
        };
        match job.prompts.as_slice() {
            [prompt] if mrope && prompt.len() == mm.prompt_len() => Ok(Some(mm)),
            _ => {
                tracing::error!("request {}: images for a model without M-RoPE, or that do not fit the prompt", job.client.id());
                Err(())
            }
        }
    }

    /// Drops sequences whose client left or whose choice was ended downstream.
    pub fn reap_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .sched
            .ids()
            .filter(|&id| {
                let s = self.sched.get(id).expect("listed");
                s.client.is_cancelled() || s.client.is_stopped(s.choice)
            })
            .collect();
        let mut any = !gone.is_empty();
        for id in gone {
            if let Some(seq) = self.sched.remove(id, &mut self.blocks) {
                if self.released(&seq) {
                    continue;
                }
                match self.beam_of.remove(&id) {
                    Some(group) => self.abort_beams(group, &seq),
                    None => seq.client.send(EngineEvent::Tokens(event(&seq, vec![], vec![], Some(Finish::Abort)))),
                }
            }
        }
        for u in self.audio.reap_cancelled() {
            abort_unstarted(&u);
            any = true;
        }
        if any {
            self.publish();
        }
    }

    /// Bookkeeping for a sequence that left the scheduler: a Whisper window gives its
    /// place back; a language detection that ends without a language drops its request
    /// (aborting every window). True when the sequence's choice needs no `Abort` of its own.
    fn released(&mut self, seq: &Sequence) -> bool {
        let Some(a) = &seq.audio else { return false };
        if a.holds_window {
            self.audio.held -= 1;
        }
        if a.role == Role::DetectLanguage {
            if let Some(u) = self.audio.drop_request(seq.client.key()) {
                abort_unstarted(&u);
            }
            return true;
        }
        false
    }

    /// Starts the Whisper windows that have a place: one encoder batch, then a sequence
    /// per window. Returns the encoder's time.
    fn start_windows(&mut self) -> Duration {
        let Some(w) = self.model.whisper() else { return Duration::ZERO };
        let free = w.max_windows.saturating_sub(self.audio.held);
        let starts = self.audio.pick(free, whisper::ENCODER_BATCH);
        if starts.is_empty() {
            return Duration::ZERO;
        }
        let t0 = Instant::now();
        let features: Vec<&[f32]> = starts
            .iter()
            .filter_map(|s| match &s.input {
                StartInput::Features(f) => Some(f.as_slice()),
                StartInput::Encoded(_) => None,
            })
            .collect();
        let mut encoded = w.encode(&features).into_iter();
        let took = t0.elapsed();
        for mut start in starts {
            let input = std::mem::replace(&mut start.input, StartInput::Features(Vec::new()));
            let cross = match input {
                StartInput::Features(_) => encoded.next().expect("one encoder output per window"),
                StartInput::Encoded(c) => c,
            };
            self.start_window(start, cross);
        }
        took
    }

    /// A sequence for a Whisper window (or its language detection), in the scheduler.
    fn start_window(&mut self, start: Start, cross: CrossKv) {
        let room = self.cfg.max_model_len.saturating_sub(start.prompt.len());
        let max_new = start.params.max_tokens.map_or(room, |m| m.min(room));
        let seed = match start.params.seed {
            Some(s) => s.wrapping_add(start.window as u64),
            None => crate::ids::splitmix(start.client.key() ^ (self.next_id << 20) ^ now_nanos()),
        };
        let id = self.next_id;
        self.next_id += 1;
        let seq = Sequence {
            id,
            choice: start.window,
            prompt_index: start.window,
            choices: start.windows,
            prompt: Arc::new(start.prompt),
            output: Vec::new(),
            params: start.params,
            max_new,
            rng: ChaCha8Rng::seed_from_u64(seed),
            blocks: Vec::new(),
            computed: 0,
            hashes: Vec::new(),
            // Every window's keys depend on its audio: nothing is shared between sequences.
            salt: crate::ids::splitmix(start.client.key() ^ id),
            priority: start.priority,
            arrival: start.client.timeline().arrived(),
            client: start.client,
            prompt_logprobs: Vec::new(),
            announced: false,
            guide: None,
            audio: Some(AudioSeq { cross, rules: start.rules, role: start.role, holds_window: true }),
            mm: None,
        };
        self.sched.add(seq);
    }

    /// A language detection sampled `token`: the detection gives its place to the first
    /// window, which starts now with the language in its prompt.
    fn language_detected(&mut self, id: SeqId, token: u32) {
        let Some(seq) = self.sched.remove(id, &mut self.blocks) else { return };
        let Some(audio) = seq.audio else { return };
        match self.audio.detected(seq.client.key(), token, audio.cross) {
            Some(mut start) => {
                let StartInput::Encoded(cross) = std::mem::replace(&mut start.input, StartInput::Features(Vec::new())) else {
                    unreachable!("the first window starts on the detection's encoder output")
                };
                self.start_window(start, cross);
            }
            None => self.audio.held -= 1,
        }
    }

    /// Ends every sequence with an error (after a failed step, whose state cannot be
    /// trusted), freeing all blocks, so that the engine can go on with new requests.
    pub fn fail_all(&mut self, error: EngineError) {
        self.end_all(Some(error));
    }

    /// Ends every choice of every request now with `Finish::Abort` (the server is shutting
    /// down), freeing all blocks.
    pub fn abort_all(&mut self) {
        self.end_all(None);
    }

    /// Ends every sequence, each request told `error` first when there is one, and each
    /// choice ending with `Finish::Abort`.
    fn end_all(&mut self, error: Option<EngineError>) {
        let ids: Vec<SeqId> = self.sched.ids().collect();
        let mut told = std::collections::HashSet::new();
        for id in ids {
            if let Some(seq) = self.sched.remove(id, &mut self.blocks) {
                if let (Some(e), true) = (&error, told.insert(seq.client.key())) {
                    seq.client.send(EngineEvent::Failed(e.clone()));
                }
                if self.released(&seq) {
                    continue;
                }
                match self.beam_of.remove(&id) {
                    Some(group) => self.abort_beams(group, &seq),
                    None => seq.client.send(EngineEvent::Tokens(event(&seq, vec![], vec![], Some(Finish::Abort)))),
                }
            }
        }
        for u in self.audio.drain() {
            if let (Some(e), true) = (&error, told.insert(u.client.key())) {
                u.client.send(EngineEvent::Failed(e.clone()));
            }
            abort_unstarted(&u);
        }
        self.audio.held = 0;
        self.publish();
    }

    /// One step: schedule, forward, sample, report. Returns what it spent its time on.
    pub fn step(&mut self) -> StepTimes {
        let mut times = StepTimes { encode: self.start_windows(), ..StepTimes::default() };
        let t0 = Instant::now();
        let plan = self.sched.schedule(&self.cfg.scheduler, &mut self.blocks);
        if plan.entries.is_empty() {
            return times;
        }
        let mut chunks = Vec::with_capacity(plan.entries.len());
        // Rows of the returned logits: those to sample from, and those that score a
        // prompt token (prompt_logprobs), each with its sequence and the token it scores.
        let mut sampling = Vec::new();
        let mut sample_rows = Vec::new();
        let mut prompt_rows: Vec<PromptRow> = Vec::new();
        let mut row = 0i64;
        for &(id, n) in &plan.entries {
            let seq = self.sched.get(id).expect("planned sequence");
            seq.client.timeline().mark_scheduled(t0);
            let tokens: Vec<u32> = (seq.computed..seq.computed + n).map(|i| seq.token(i)).collect();
            let completes = seq.computed + n == seq.len();
            let mut logits_for = Vec::new();
            if seq.params.prompt_logprobs.is_some() {
                // Position p predicts prompt token p + 1; each is scored once, even when a
                // preempted sequence computes its prompt again.
                for i in 0..n {
                    let next = seq.computed + i + 1;
                    if next < seq.prompt.len() && next > seq.prompt_logprobs.len() {
                        logits_for.push(i);
                        prompt_rows.push(PromptRow { seq: id, row, token: seq.prompt[next] as i64 });
                        row += 1;
                    }
                }
            }
            if completes {
                logits_for.push(n - 1);
                sampling.push(id);
                sample_rows.push(row);
                row += 1;
            }
            chunks.push(SeqChunk { tokens, cached: seq.computed, block_table: seq.blocks.clone(), logits_for, prompt_len: seq.prompt.len() });
        }
        let mut batch = StepBatch::new(&chunks, self.cfg.block_size);
        for (i, (id, _)) in plan.entries.iter().enumerate() {
            if let Some(mm) = &self.sched.get(*id).expect("planned").mm {
                batch.add_images(i, mm);
            }
        }
        times.tokens = batch.tokens.len();
        times.seqs = chunks.len();
        let t1 = Instant::now();
        times.schedule = t1 - t0;
        let logits = match &self.model {
            EngineModel::Decoder(d) => d.forward(&batch, &mut self.cache),
            EngineModel::Whisper(w) => {
                let cross: Vec<&CrossKv> = plan
                    .entries
                    .iter()
                    .map(|(id, _)| {
                        let seq = self.sched.get(*id).expect("planned");
                        &seq.audio.as_ref().expect("a Whisper sequence has its encoder output").cross
                    })
                    .collect();
                w.forward(&batch, &mut self.cache, &cross)
            }
        };
        let t2 = Instant::now();
        times.forward = t2 - t1;
        let caching = self.cfg.scheduler.prefix_caching;
        for &(id, n) in &plan.entries {
            let seq = self.sched.get_mut(id).expect("planned");
            seq.computed += n;
            if caching {
                prefix::register_full_blocks(seq, &mut self.blocks);
            }
        }
        if !prompt_rows.is_empty() {
            self.score_prompts(&logits, &prompt_rows);
        }
        let (beams, sampled): (Vec<(SeqId, i64)>, Vec<(SeqId, i64)>) =
            sampling.iter().copied().zip(sample_rows.iter().copied()).partition(|(id, _)| self.beam_of.contains_key(id));
        let rows_of = |list: &[(SeqId, i64)]| {
            let idx: Vec<i64> = list.iter().map(|&(_, r)| r).collect();
            logits.index_select(0, &Tensor::from_slice(&idx).to_device(logits.device()))
        };
        if !sampled.is_empty() {
            let ids: Vec<SeqId> = sampled.iter().map(|&(id, _)| id).collect();
            let all_rows = prompt_rows.is_empty() && beams.is_empty();
            self.sample_and_report(&if all_rows { logits.shallow_clone() } else { rows_of(&sampled) }, &ids);
        }
        if !beams.is_empty() {
            self.beam_step(&rows_of(&beams), &beams.iter().map(|&(id, _)| id).collect::<Vec<_>>());
        }
        times.sample = t2.elapsed();
        self.publish();
        times
    }

    /// Logprobs of prompt tokens (`prompt_logprobs`) from the rows that predict them; a
    /// sequence's rows come in prompt order, after the positions it has already scored.
    fn score_prompts(&mut self, logits: &Tensor, rows: &[PromptRow]) {
        let idx = Tensor::from_slice(&rows.iter().map(|r| r.row).collect::<Vec<_>>()).to_device(logits.device());
        let targets: Vec<i64> = rows.iter().map(|r| r.token).collect();
        let ks: Vec<usize> = rows
            .iter()
            .map(|r| self.sched.get(r.seq).and_then(|s| s.params.prompt_logprobs).unwrap_or(0))
            .collect();
        let scored = sampling::logprobs_of(&logits.index_select(0, &idx), &targets, &ks);
        for (r, lp) in rows.iter().zip(scored) {
            self.sched.get_mut(r.seq).expect("scored sequence").prompt_logprobs.push(lp);
        }
    }

    fn sample_and_report(&mut self, logits: &Tensor, ids: &[SeqId]) {
        // Every random row draws exactly one number per step from its own generator,
        // whatever else is in the batch.
        self.stats.generation_tokens.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut uniforms = Vec::with_capacity(ids.len());
        for &id in ids {
            let seq = self.sched.get_mut(id).expect("sampled sequence");
            uniforms.push(if seq.params.is_greedy() { 0.0 } else { seq.rng.random::<f32>() });
        }
        // Structured outputs: each constrained row's allowed tokens at this step. A row whose
        // constraint fails here (it should not: every token it took was allowed) is ended.
        let mut masks: Vec<Option<TokenMask>> = Vec::with_capacity(ids.len());
        let mut broken: Vec<Option<String>> = vec![None; ids.len()];
        for (i, &id) in ids.iter().enumerate() {
            let seq = self.sched.get_mut(id).expect("sampled sequence");
            masks.push(match seq.guide.as_mut().map(GuideState::mask) {
                None => None,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    broken[i] = Some(e);
                    None
                }
            });
        }
        // Whisper's rules on the rows that transcribe, before the request's own processors.
        let adjusted = {
            let rules: Vec<Option<(&crate::model::whisper::rules::DecodeRules, &[u32])>> = ids
                .iter()
                .map(|&id| {
                    let seq = self.sched.get(id).expect("sampled");
                    seq.audio
                        .as_ref()
                        .filter(|a| a.role == Role::Transcribe)
                        .map(|a| (&*a.rules, seq.output.as_slice()))
                })
                .collect();
            whisper::WhisperEngine::apply_rules(logits, &rules)
        };
        let drawn = {
            let eos = &self.cfg.eos_ids;
            let rows: Vec<SampleRow> = ids
                .iter()
                .zip(&uniforms)
                .zip(masks.iter_mut())
                .map(|((&id, &uniform), mask)| {
                    let seq = self.sched.get(id).expect("sampled");
                    let mut banned = processors::banned_tokens(&seq.params, &seq.prompt, &seq.output, eos);
                    if let Some(m) = mask.as_mut() {
                        // Bans narrow the constraint's set, unless they would empty it (EOS
                        // before min_tokens where only EOS completes the text): the constraint wins.
                        let left = m.count() - banned.iter().filter(|&&t| m.allows(t)).count();
                        if left > 0 {
                            banned.iter().for_each(|&t| m.disallow(t));
                        }
                        banned.clear();
                    }
                    let ctx = RowContext { prompt: &seq.prompt, output: &seq.output, banned, mask: mask.as_ref() };
                    SampleRow { params: &seq.params, uniform, ctx }
                })
                .collect();
            sampling::sample_adjusted(logits, adjusted.as_ref(), &rows)
        };
        let now = Instant::now();
        for ((&id, s), broken) in ids.iter().zip(drawn).zip(broken) {
            let seq = self.sched.get_mut(id).expect("sampled sequence");
            if let Some(e) = broken {
                tracing::error!("request {}: the structured-output constraint failed: {e}", seq.client.id());
                seq.client.send(EngineEvent::Failed(EngineError::ConstraintFailed(e)));
                if let Some(seq) = self.sched.remove(id, &mut self.blocks) {
                    if !self.released(&seq) {
                        seq.client.send(EngineEvent::Tokens(event(&seq, vec![], vec![], Some(Finish::Abort))));
                    }
                }
                continue;
            }
            if seq.audio.as_ref().is_some_and(|a| a.role == Role::DetectLanguage) {
                self.language_detected(id, s.token);
                continue;
            }
            self.stats.latency.on_token(seq.client.timeline(), now);
            seq.output.push(s.token);
            if !self.cfg.eos_ids.contains(&s.token) {
                if let Some(Err(e)) = seq.guide.as_mut().map(|g| g.advance(s.token)) {
                    tracing::warn!("request {}: the constraint refused a token it allowed: {e}", seq.client.id());
                }
            }
            let first = !seq.announced;
            seq.announced = true;
            let seq = self.sched.get(id).expect("sampled sequence");
            let finish = self.finish_of(seq, s.token);
            let mut ev = event(seq, vec![s.token], s.logprobs.into_iter().collect(), finish.clone());
            if first {
                if seq.params.prompt_logprobs.is_some() {
                    ev.prompt_logprobs = Some(Arc::new(seq.prompt_logprobs.clone()));
                }
                ev.prompt = Some(seq.prompt.clone());
                ev.first_token_at = Some(Instant::now());
            }
            let client = seq.client.clone();
            if finish.is_some() {
                if let Some(seq) = self.sched.remove(id, &mut self.blocks) {
                    self.released(&seq);
                }
            }
            client.send(EngineEvent::Tokens(ev));
        }
    }

    /// Beam rows: each beam's most likely next tokens (raw logprobs) go to its group;
    /// groups whose beams are all in choose the next beams, or report their best ones.
    fn beam_step(&mut self, logits: &Tensor, ids: &[SeqId]) {
        self.stats.generation_tokens.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let k = ids.iter().map(|id| self.beams[&self.beam_of[id]].candidates_per_beam()).max().unwrap_or(1);
        let k = k.min(logits.size()[1] as usize) as i64;
        let (lps, toks) = logits.to_kind(tch::Kind::Float).log_softmax(-1, tch::Kind::Float).topk(k, -1, true, true);
        let lps: Vec<Vec<f32>> = Vec::try_from(lps.to_device(tch::Device::Cpu)).expect("beam logprobs");
        let toks: Vec<Vec<i64>> = Vec::try_from(toks.to_device(tch::Device::Cpu)).expect("beam tokens");
        let mut touched = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let group = self.beam_of.remove(&id).expect("a beam");
            let g = self.beams.get_mut(&group).expect("the beam's group");
            let want = g.candidates_per_beam().min(k as usize);
            let cands = toks[i][..want].iter().zip(&lps[i][..want]).map(|(&t, &l)| (t as u32, l)).collect();
            let seq = self.sched.take(id).expect("a scheduled beam");
            g.offer(seq, cands, &mut self.blocks);
            touched.push(group);
        }
        touched.dedup();
        for group in touched {
            if !self.beams[&group].complete() {
                continue;
            }
            let max_len = self.cfg.max_model_len;
            let g = self.beams.get_mut(&group).expect("group");
            let next = g.advance(&self.cfg.eos_ids, &mut self.next_id, &mut self.blocks, |seq, len| {
                len >= seq.max_new || seq.prompt.len() + len >= max_len
            });
            match next {
                beam::Next::Continue(seqs) => {
                    for seq in seqs {
                        self.beam_of.insert(seq.id, group);
                        self.sched.add(seq);
                    }
                }
                beam::Next::Done(best) => {
                    let g = self.beams.remove(&group).expect("group");
                    self.report_beams(&g, best);
                }
            }
        }
    }

    /// The finished search's beams, as the request's choices for their prompt, best first.
    fn report_beams(&mut self, g: &beam::BeamGroup, best: Vec<beam::Finished>) {
        let width = g.params.width;
        for j in 0..width {
            let (tokens, finish) = match best.get(j) {
                Some(f) => (f.output.clone(), Some(if f.eos { Finish::Stop(None) } else { Finish::Length })),
                // Fewer beams than asked (a tiny vocabulary): the rest end empty.
                None => (Vec::new(), Some(Finish::Length)),
            };
            let ev = TokenEvent {
                choice: g.prompt_index * width + j,
                prompt_index: g.prompt_index,
                tokens,
                logprobs: Vec::new(),
                finish,
                prompt_tokens: g.prompt.len(),
                choices: g.choices,
                prompt: Some(g.prompt.clone()),
                prompt_logprobs: None,
                first_token_at: Some(Instant::now()),
            };
            g.client.send(EngineEvent::Tokens(ev));
        }
    }

    /// Ends a beam group early (its client left, or a step failed): every beam leaves the
    /// scheduler, every held block is freed, and each of its choices ends as aborted.
    fn abort_beams(&mut self, group: u64, seq: &Sequence) {
        let Some(mut g) = self.beams.remove(&group) else { return };
        g.release(&mut self.blocks);
        let others: Vec<SeqId> = self.beam_of.iter().filter(|&(_, &grp)| grp == group).map(|(&id, _)| id).collect();
        for id in others {
            self.beam_of.remove(&id);
            self.sched.remove(id, &mut self.blocks);
        }
        for j in 0..g.params.width {
            let mut ev = event(seq, vec![], vec![], Some(Finish::Abort));
            ev.choice = g.prompt_index * g.params.width + j;
            seq.client.send(EngineEvent::Tokens(ev));
        }
    }

    fn finish_of(&self, seq: &Sequence, token: u32) -> Option<Finish> {
        let p = &seq.params;
        if !p.ignore_eos && self.cfg.eos_ids.contains(&token) {
            return Some(Finish::Stop(None));
        }
        if p.stop_token_ids.contains(&token) {
            return Some(Finish::Stop(Some(StopReason::Token(token))));
        }
        // The constraint is complete and nothing may follow: stop now rather than spend a
        // step on the only token left (EOS).
        if seq.guide.as_ref().is_some_and(GuideState::is_finished) {
            return Some(Finish::Stop(None));
        }
        if seq.output.len() >= seq.max_new || seq.len() >= self.cfg.max_model_len {
            return Some(Finish::Length);
        }
        None
    }
}

/// A row of a step's logits that scores a prompt token.
struct PromptRow {
    seq: SeqId,
    row: i64,
    /// The prompt token the row predicts.
    token: i64,
}

fn event(seq: &Sequence, tokens: Vec<u32>, logprobs: Vec<sampling::TokenLogprobs>, finish: Option<Finish>) -> TokenEvent {
    TokenEvent {
        choice: seq.choice,
        prompt_index: seq.prompt_index,
        tokens,
        logprobs,
        finish,
        prompt_tokens: seq.prompt.len(),
        choices: seq.choices,
        prompt: None,
        prompt_logprobs: None,
        first_token_at: None,
    }
}

/// The `Abort` event of a Whisper window that never started.
fn unstarted_event(window: usize, windows: usize, prompt_tokens: usize) -> TokenEvent {
    TokenEvent {
        choice: window,
        prompt_index: window,
        tokens: vec![],
        logprobs: vec![],
        finish: Some(Finish::Abort),
        prompt_tokens,
        choices: windows,
        prompt: None,
        prompt_logprobs: None,
        first_token_at: None,
    }
}

/// Ends every window of a request that had not started.
fn abort_unstarted(u: &Unstarted) {
    for &(w, len) in &u.left {
        u.client.send(EngineEvent::Tokens(unstarted_event(w, u.windows, len)));
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
