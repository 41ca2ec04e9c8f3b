//! encode: the pooling model's forward passes. Its one worker takes every request that
//! is waiting, lays all their inputs out shortest first, and runs them in padded batches
//! of at most `max_seqs` inputs and `max_tokens` padded tokens, so that many small
//! requests share one forward pass and one large request is split into several. Each
//! batch's duration is the stage's service time.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::api::error::ApiError;
use crate::engine::stats::EngineStats;
use crate::stages::item::{Item, Payload};
use crate::model::bert::EncoderInput;
use crate::model::encoder::EncoderModel;
use crate::pipeline::{Inlet, Lifecycle, Outlet, Stage};

pub struct Encode {
    model: Mutex<Option<EncoderModel>>,
    /// `/metrics`: prompt tokens encoded, and requests in the forward pass.
    stats: Arc<EngineStats>,
    /// Inputs per forward pass at most.
    pub max_seqs: usize,
    /// Padded tokens (inputs × longest) per forward pass at most.
    pub max_tokens: usize,
    /// Says when waiting requests are to be aborted rather than run (shutdown).
    lifecycle: Arc<Lifecycle>,
}

impl Encode {
    pub fn new(model: EncoderModel, max_seqs: usize, max_tokens: usize, stats: Arc<EngineStats>, lifecycle: Arc<Lifecycle>) -> Self {
        Encode { model: Mutex::new(Some(model)), stats, max_seqs: max_seqs.max(1), max_tokens: max_tokens.max(1), lifecycle }
    }
}

/// Groups input indexes (sorted by length) into batches within the limits; every batch
/// has at least one input, however long.
pub fn plan_batches(lengths: &[usize], order: &[usize], max_seqs: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &i in order {
        let len = lengths[i].max(1);
        let grown = longest.max(len);
        if !current.is_empty() && (current.len() + 1 > max_seqs || (current.len() + 1) * grown > max_tokens) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl Stage<Item> for Encode {
    fn process(&self, _item: Item, _out: &Outlet<Item>) {
        unreachable!("encode batches and drives its own inlet")
    }

    fn run(&self, inlet: Inlet<Item>, out: Outlet<Item>) {
        let Some(model) = self.model.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        // Gather at most this many inputs before running, so a flood cannot delay the
        // first request without bound.
        let gather = self.max_seqs * 4;
        while let Some(first) = inlet.recv() {
            let mut items = vec![first];
            let mut waiting = inputs_of(&items[0]);
            while waiting < gather {
                match inlet.try_recv() {
                    Ok(item) => {
                        waiting += inputs_of(&item);
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
            items.retain(|i| !i.ctx.is_cancelled());
            if self.lifecycle.is_aborting() {
                for item in items.drain(..) {
                    item.ctx.fail(ApiError::aborted());
                }
            }
            if items.is_empty() {
                continue;
            }
            // Every input of every request, by (request, input).
            let mut refs: Vec<(usize, usize)> = Vec::new();
            for (r, item) in items.iter().enumerate() {
                if let Payload::Pool(job) = &item.payload {
                    refs.extend((0..job.encoded.len()).map(|k| (r, k)));
                }
            }
            let input = |(r, k): (usize, usize)| -> &EncoderInput {
                match &items[r].payload {
                    Payload::Pool(job) => &job.encoded[k],
                    _ => unreachable!("encode takes tokenized pooling jobs"),
                }
            };
            let lengths: Vec<usize> = refs.iter().map(|&rk| input(rk).ids.len()).collect();
            self.stats.prompt_tokens.fetch_add(lengths.iter().sum::<usize>() as u64, Ordering::Relaxed);
            self.stats.requests_running.store(items.len() as u64, Ordering::Relaxed);
            let mut order: Vec<usize> = (0..refs.len()).collect();
            order.sort_by_key(|&i| lengths[i]);
            let round = Instant::now();
            let mut results: Vec<Option<Vec<f32>>> = vec![None; refs.len()];
            for batch in plan_batches(&lengths, &order, self.max_seqs, self.max_tokens) {
                let start = Instant::now();
                let inputs: Vec<&EncoderInput> = batch.iter().map(|&i| input(refs[i])).collect();
                // A failed forward pass (out of memory, a kernel error) fails the requests
                // it carried, not the stage.
                match std::panic::catch_unwind(AssertUnwindSafe(|| model.run(&inputs))) {
                    Ok(outputs) => {
                        for (&i, v) in batch.iter().zip(outputs) {
                            results[i] = Some(v);
                        }
                    }
                    Err(e) => {
                        let why = super::panic_message(&*e);
                        tracing::error!("a forward pass of {} inputs failed: {why}", inputs.len());
                    }
                }
                inlet.metrics().record_service(start.elapsed());
            }
            self.stats.requests_running.store(0, Ordering::Relaxed);
            let mut results = results.into_iter();
            // Each request's share: the round of forward passes that carried its inputs.
            let took = round.elapsed();
            for item in items {
                inlet.add_item_service(&item, took);
                let inputs = match &item.payload {
                    Payload::Pool(job) => job.encoded.len(),
                    _ => 0,
                };
                let outputs: Vec<Option<Vec<f32>>> = results.by_ref().take(inputs).collect();
                inlet.contain(item, |mut item| {
                    let complete = outputs.iter().all(Option::is_some);
                    if let Payload::Pool(job) = &mut item.payload {
                        job.outputs = outputs.into_iter().flatten().collect();
                    }
                    if complete {
                        let _ = out.send(item);
                    } else {
                        item.ctx.fail(ApiError::internal("The model failed on this request's inputs; see the server log."));
                    }
                });
            }
        }
    }
}

fn inputs_of(item: &Item) -> usize {
    match &item.payload {
        Payload::Pool(job) => job.encoded.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::plan_batches;

    #[test]
    fn batches_respect_both_limits_and_keep_every_input() {
        let lengths = [3, 10, 4, 50, 5, 6];
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| lengths[i]);
        let b = plan_batches(&lengths, &order, 2, 100);
        assert_eq!(b, vec![vec![0, 2], vec![4, 5], vec![1, 3]]);
        let b = plan_batches(&lengths, &order, 8, 20);
        // 3,4,5 fit 3×5=15; adding 6 makes 4×6=24 > 20.
        assert_eq!(b, vec![vec![0, 2, 4], vec![5, 1], vec![3]]);
        let total: usize = b.iter().map(Vec::len).sum();
        assert_eq!(total, lengths.len());
    }
}
