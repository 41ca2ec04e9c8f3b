//! Beam search (vLLM's `use_beam_search`, with `n` as the beam width and
//! `length_penalty`), done the way vLLM's engine client does it: every live beam of a
//! prompt offers its 2·width most likely next tokens; of all those candidates, the ones
//! that end in EOS are set aside as finished, and the `width` best of the rest live on.
//! After `max_tokens` steps (or when no beam is left) the finished and live beams are
//! ranked by `cumulative logprob / length^length_penalty` (length counts the prompt, not a
//! final EOS) and the best `width` are returned, best first.
//!
//! A beam is an ordinary sequence in the scheduler until its candidates are in; it then
//! leaves the scheduler, keeping its full KV blocks (shared, by reference count) for the
//! beams that continue it. Once every live beam of the group is in, the group picks the
//! next beams: each is a new sequence on the parent's full blocks, which recomputes only
//! the parent's last, partial block and its new token.

use std::collections::HashMap;
use std::sync::Arc;

use super::blocks::BlockManager;
use super::request::Client;
use super::sequence::{SeqId, Sequence};

/// A request's beam-search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamParams {
    pub width: usize,
    pub length_penalty: f64,
}

/// A beam whose next-token candidates are known, out of the scheduler.
struct Ready {
    seq: Sequence,
    cum: f64,
    /// The parent's full blocks, held for the beams that continue it.
    kept: Vec<u32>,
    candidates: Vec<(u32, f32)>,
}

/// A beam that ended: with EOS, or at the length limit.
#[derive(Debug, Clone)]
pub struct Finished {
    pub output: Vec<u32>,
    pub cum: f64,
    pub eos: bool,
}

/// The beams of one prompt of one request.
pub struct BeamGroup {
    pub params: BeamParams,
    pub ignore_eos: bool,
    pub client: Arc<dyn Client>,
    pub prompt: Arc<Vec<u32>>,
    pub prompt_index: usize,
    /// Choices in the whole request.
    pub choices: usize,
    prompt_len: usize,
    /// Beams in the scheduler, with their cumulative logprob.
    live: HashMap<SeqId, f64>,
    ready: Vec<Ready>,
    finished: Vec<Finished>,
}

fn score(f: &Finished, prompt_len: usize, length_penalty: f64) -> f64 {
    let len = prompt_len + f.output.len() - usize::from(f.eos);
    f.cum / (len.max(1) as f64).powf(length_penalty)
}

/// What choosing the next beams gave.
pub enum Next {
    /// New beams to schedule.
    Continue(Vec<Sequence>),
    /// The search is over: the best beams, best first.
    Done(Vec<Finished>),
}

impl BeamGroup {
    pub fn new(params: BeamParams, ignore_eos: bool, root: &Sequence) -> Self {
        BeamGroup {
            params,
            ignore_eos,
            client: root.client.clone(),
            prompt: root.prompt.clone(),
            prompt_index: root.prompt_index,
            choices: root.choices,
            prompt_len: root.prompt.len(),
            live: HashMap::from([(root.id, 0.0)]),
            ready: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Candidates a step needs per beam.
    pub fn candidates_per_beam(&self) -> usize {
        2 * self.params.width
    }

    /// A beam's candidates are in: it leaves the scheduler (taken out by the caller and
    /// given here with its blocks still on) and waits for the others.
    pub fn offer(&mut self, mut seq: Sequence, candidates: Vec<(u32, f32)>, blocks: &mut BlockManager) {
        let cum = self.live.remove(&seq.id).expect("a live beam");
        let full = (seq.computed / blocks.block_size).min(seq.blocks.len());
        let kept: Vec<u32> = seq.blocks[..full].to_vec();
        for &b in &kept {
            blocks.share(b);
        }
        blocks.release(&mut seq.blocks);
        seq.hashes.truncate(full);
        self.ready.push(Ready { seq, cum, kept, candidates });
    }

    /// Whether every live beam has offered its candidates.
    pub fn complete(&self) -> bool {
        self.live.is_empty()
    }

    /// vLLM's beam score: cumulative logprob over length^length_penalty, the length
    /// counting the prompt but not a final EOS.
    fn score(&self, f: &Finished) -> f64 {
        score(f, self.prompt_len, self.params.length_penalty)
    }

    /// Chooses the next beams from every ready beam's candidates. `at_limit(len)` says
    /// whether a beam with `len` output tokens may not grow further.
    pub fn advance(
        &mut self,
        eos_ids: &[u32],
        next_id: &mut SeqId,
        blocks: &mut BlockManager,
        at_limit: impl Fn(&Sequence, usize) -> bool,
    ) -> Next {
        let ready = std::mem::take(&mut self.ready);
        let mut alive: Vec<(usize, u32, f64)> = Vec::new();
        for (r, beam) in ready.iter().enumerate() {
            for &(tok, lp) in &beam.candidates {
                let cum = beam.cum + lp as f64;
                if !self.ignore_eos && eos_ids.contains(&tok) {
                    let mut output = beam.seq.output.clone();
                    output.push(tok);
                    self.finished.push(Finished { output, cum, eos: true });
                } else {
                    alive.push((r, tok, cum));
                }
            }
        }
        // Live beams all have the same length, so their scores order as their logprobs.
        alive.sort_by(|a, b| b.2.total_cmp(&a.2));
        alive.truncate(self.params.width);
        let mut next = Vec::new();
        for &(r, tok, cum) in &alive {
            let parent = &ready[r];
            let mut output = parent.seq.output.clone();
            output.push(tok);
            if at_limit(&parent.seq, output.len()) {
                self.finished.push(Finished { output, cum, eos: false });
                continue;
            }
            for &b in &parent.kept {
                blocks.share(b);
            }
            let p = &parent.seq;
            let child = Sequence {
                id: *next_id,
                client: p.client.clone(),
                choice: p.choice,
                prompt_index: p.prompt_index,
                choices: p.choices,
                prompt: Arc::clone(&p.prompt),
                output,
                params: Arc::clone(&p.params),
                max_new: p.max_new,
                rng: p.rng.clone(),
                blocks: parent.kept.clone(),
                computed: parent.kept.len() * blocks.block_size,
                hashes: p.hashes.clone(),
                salt: p.salt,
                priority: p.priority,
                arrival: p.arrival,
                prompt_logprobs: Vec::new(),
                announced: false,
                // Decode refuses beam search under a structured-output constraint.
                guide: None,
                // Whisper requests do not take beam search.
                audio: None,
                mm: p.mm.clone(),
            };
            *next_id += 1;
            self.live.insert(child.id, cum);
            next.push(child);
        }
        for mut beam in ready {
            blocks.release(&mut beam.kept);
        }
        if next.is_empty() { Next::Done(self.best()) } else { Next::Continue(next) }
    }

    /// The `width` best finished beams, best first (ties: the earlier found).
    fn best(&mut self) -> Vec<Finished> {
        let mut scored: Vec<(f64, Finished)> =
            std::mem::take(&mut self.finished).into_iter().map(|f| (self.score(&f), f)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0)); // stable: ties keep the earlier found
        scored.into_iter().take(self.params.width).map(|(_, f)| f).collect()
    }

    /// Gives back every block the group holds (the request ended early).
    pub fn release(&mut self, blocks: &mut BlockManager) {
        for mut beam in std::mem::take(&mut self.ready) {
            blocks.release(&mut beam.kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_divides_by_length_to_the_penalty() {
        let f = Finished { output: vec![5, 2], cum: -4.0, eos: true };
        assert_eq!(score(&f, 3, 1.0), -1.0, "3 prompt tokens + 1 (the EOS does not count)");
        assert_eq!(score(&f, 3, 0.0), -4.0);
        assert_eq!(score(&Finished { eos: false, ..f }, 3, 1.0), -0.8);
    }
}
