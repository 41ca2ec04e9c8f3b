//! Continuous batching: each step, decide which sequences run and how many of their tokens.
//!
//! Running sequences come first (one token each when decoding, a chunk when their prompt
//! is still being read), then waiting ones are admitted while the token budget, the
//! sequence limit and the free blocks allow. Long prompts are cut into chunks so decodes
//! keep flowing. When blocks run out, the last sequence in scheduling order (lowest
//! priority, then youngest) is preempted: its blocks are freed and it is recomputed later,
//! which gives the same result.

use std::collections::HashMap;

use super::blocks::BlockManager;
use super::prefix;
use super::sequence::{SeqId, Sequence};

/// The order of admission (`--scheduling-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// First come, first served.
    Fcfs,
    /// By the request's `priority` (lower first), then arrival; a waiting request may
    /// preempt a running one of lower priority.
    Priority,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub policy: SchedulingPolicy,
    /// Share the KV blocks of equal prompt prefixes (`--enable-prefix-caching`).
    pub prefix_caching: bool,
}

#[derive(Default)]
pub struct Scheduler {
    seqs: HashMap<SeqId, Sequence>,
    /// Sorted by `order_key`.
    running: Vec<SeqId>,
    /// Sorted by `order_key`.
    waiting: Vec<SeqId>,
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

/// What runs this step: sequences and how many tokens of each.
#[derive(Debug, Default)]
pub struct Plan {
    pub entries: Vec<(SeqId, usize)>,
}

impl Scheduler {
    pub fn add(&mut self, seq: Sequence) {
        let id = seq.id;
        let key = seq.order_key();
        self.seqs.insert(id, seq);
        let at = self.waiting.partition_point(|w| self.seqs[w].order_key() < key);
        self.waiting.insert(at, id);
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    pub fn get_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    /// Running sequences, in scheduling order.
    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// Waiting sequences, in scheduling order.
    pub fn waiting(&self) -> &[SeqId] {
        &self.waiting
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Takes a sequence out (finished or aborted) and frees its blocks.
    pub fn remove(&mut self, id: SeqId, blocks: &mut BlockManager) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        blocks.release(&mut seq.blocks);
        Some(seq)
    }

    /// Takes a sequence out with its blocks still on it (a beam handing its blocks on).
    pub fn take(&mut self, id: SeqId) -> Option<Sequence> {
        let seq = self.seqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        Some(seq)
    }

    fn preempt(&mut self, id: SeqId, blocks: &mut BlockManager) {
        let seq = self.seqs.get_mut(&id).expect("preempting a known sequence");
        blocks.release(&mut seq.blocks);
        seq.client.timeline().mark_preempted();
        seq.computed = 0;
        seq.hashes.clear();
        let key = seq.order_key();
        self.running.retain(|&r| r != id);
        let at = self.waiting.partition_point(|w| self.seqs[w].order_key() < key);
        self.waiting.insert(at, id);
        self.preemptions += 1;
    }

    pub fn schedule(&mut self, cfg: &SchedulerConfig, blocks: &mut BlockManager) -> Plan {
        let mut plan = Plan::default();
        let mut budget = cfg.max_batched_tokens;
        let mut preempted_now = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let n = self.seqs[&id].pending().min(budget);
            let mut scheduled_self = true;
            loop {
                let seq = self.seqs.get_mut(&id).expect("running sequence");
                let target = seq.computed + n;
                if blocks.grow(&mut seq.blocks, target) {
                    break;
                }
                // Out of blocks: preempt from the back of the line, possibly this one.
                let victim = *self.running.last().expect("this sequence is running");
                self.preempt(victim, blocks);
                preempted_now = true;
                if victim == id {
                    scheduled_self = false;
                    break;
                }
            }
            if !scheduled_self {
                break;
            }
            if n > 0 {
                plan.entries.push((id, n));
                budget -= n;
            }
            i += 1;
        }

        // Admit waiting sequences, unless this step already had to preempt.
        while !preempted_now && budget > 0 {
            let Some(&id) = self.waiting.first() else { break };
            let seq = self.seqs.get_mut(&id).expect("waiting sequence");
            let room = self.running.len() < cfg.max_num_seqs;
            // The prefix cache is asked only when the sequence could run this step, and
            // holds no blocks yet (a beam starts on its parent's blocks).
            let ask = room && cfg.prefix_caching && seq.blocks.is_empty();
            let hit = if ask { prefix::take_cached_prefix(seq, blocks) } else { 0 };
            let n = seq.pending().min(budget);
            if !(room && blocks.grow(&mut seq.blocks, seq.computed + n)) {
                // Give back what the prefix cache lent; it is looked up again next time.
                blocks.release(&mut seq.blocks);
                seq.computed = 0;
                seq.hashes.clear();
                // Under the priority policy a more urgent request displaces the least
                // urgent running one (which is recomputed later), as in vLLM.
                let key = seq.order_key();
                match self.running.last() {
                    Some(&victim) if cfg.policy == SchedulingPolicy::Priority && self.seqs[&victim].order_key() > key => {
                        if let Some(at) = plan.entries.iter().position(|e| e.0 == victim) {
                            budget += plan.entries.remove(at).1;
                        }
                        self.preempt(victim, blocks);
                        continue;
                    }
                    _ => break,
                }
            }
            if cfg.prefix_caching {
                self.prefix_queries += seq.len() as u64;
                self.prefix_hits += hit as u64;
            }
            self.waiting.remove(0);
            let key = seq.order_key();
            let at = self.running.partition_point(|r| self.seqs[r].order_key() < key);
            self.running.insert(at, id);
            plan.entries.push((id, n));
            budget -= n;
        }
        plan
    }
}
