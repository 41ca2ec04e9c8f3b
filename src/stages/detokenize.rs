//! detokenize: each choice's new tokens → new text, with stop strings. Items of one
//! request always reach the same worker (the stage is ordered), so each worker keeps the
//! decoding state of its requests in a local map.
//!
//! A stop string ends the choice here: the text stops before it (or after it, with
//! `include_stop_str_in_output`), the engine is told to drop the sequence, and whatever
//! the engine still sends for that choice is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use crate::detok::{IncrementalDecoder, Released, StopMatcher};
use crate::engine::{Finish, StopReason, TokenEvent};
use crate::stages::item::{Item, Payload, TextEvent};
use crate::model::tokenizer::Tokenizer;
use crate::pipeline::{Inlet, Outlet, Stage};

pub struct Detokenize {
    pub tokenizer: Arc<Tokenizer>,
}

struct ChoiceState {
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    generated: usize,
    /// Ended by a stop string; later tokens are dropped.
    done: bool,
}

impl Stage<Item> for Detokenize {
    fn process(&self, _item: Item, _out: &Outlet<Item>) {
        unreachable!("detokenize keeps per-worker state and runs its own loop")
    }

    fn run(&self, inlet: Inlet<Item>, out: Outlet<Item>) {
        let mut states: HashMap<(u64, usize), ChoiceState> = HashMap::new();
        while let Some(item) = inlet.recv() {
            let service = inlet.begin_service(&item);
            let request = item.ctx.key;
            let handled = inlet.contain(item, |item| self.handle(&mut states, item, &out));
            if !handled {
                // The request has failed: its choices' states go with it.
                states.retain(|&(r, _), _| r != request);
            }
            inlet.end_service(service);
        }
    }
}

impl Detokenize {
    /// One token event of one choice: its new text, sent on.
    fn handle(&self, states: &mut HashMap<(u64, usize), ChoiceState>, item: Item, out: &Outlet<Item>) {
        let Payload::Tokens(ev) = item.payload else { unreachable!("detokenize takes token events") };
        let key = (item.ctx.key, ev.choice);
        let engine_done = ev.finish.is_some();
        if item.ctx.is_cancelled() {
            if engine_done {
                states.remove(&key);
            }
            return;
        }
        let meta = item.ctx.meta().clone();
        let state = states.entry(key).or_insert_with(|| ChoiceState {
            decoder: IncrementalDecoder::new(ev.prompt.as_deref().map_or(&[], |p| p.as_slice()), meta.output.skip_special_tokens),
            stops: StopMatcher::new(meta.output.stop.clone(), meta.output.include_stop_str_in_output),
            generated: 0,
            done: false,
        });
        if !state.done {
            let echo_prompt = match (&ev.prompt, meta.output.echo) {
                (Some(p), true) => Some(self.tokenizer.decode(p, meta.output.skip_special_tokens)),
                _ => None,
            };
            let text_ev = self.advance(state, ev, echo_prompt, meta.output.min_tokens);
            if stopped_by_string(&text_ev) {
                item.ctx.stop_choice(text_ev.choice);
            }
            let _ = out.send(Item { ctx: item.ctx.clone(), payload: Payload::Text(text_ev) });
        }
        if engine_done {
            states.remove(&key);
        }
    }
}

fn stopped_by_string(ev: &TextEvent) -> bool {
    matches!(&ev.finish, Some(Finish::Stop(Some(StopReason::Text(_)))))
}

impl Detokenize {
    fn advance(&self, state: &mut ChoiceState, ev: TokenEvent, echo_prompt: Option<String>, min_tokens: usize) -> TextEvent {
        let tok = &self.tokenizer;
        let prompt_logprobs = ev.prompt_logprobs.clone();
        let prompt = ev.prompt.clone();
        let mut text = String::new();
        let mut used = 0;
        let mut finish = ev.finish.clone();
        for (i, &id) in ev.tokens.iter().enumerate() {
            let last = i + 1 == ev.tokens.len() && ev.finish.is_some();
            let mut piece = state.decoder.push(tok, id);
            if last {
                piece.push_str(&state.decoder.flush(tok));
            }
            state.generated += 1;
            used = i + 1;
            let released = if state.generated < min_tokens {
                // Too early for a stop string to end the choice: release the text as is.
                Released { text: piece, stopped: None }
            } else {
                state.stops.push(&piece, last)
            };
            text.push_str(&released.text);
            if let Some(stop) = released.stopped {
                state.done = true;
                finish = Some(Finish::Stop(Some(StopReason::Text(stop))));
                break;
            }
        }
        if ev.tokens.is_empty() && ev.finish.is_some() {
            // A finish without a token (e.g. aborted): release what was held.
            text.push_str(&state.stops.push(&state.decoder.flush(tok), true).text);
        }
        TextEvent {
            choice: ev.choice,
            prompt_index: ev.prompt_index,
            text,
            tokens: ev.tokens[..used].to_vec(),
            logprobs: ev.logprobs.into_iter().take(used).collect(),
            finish,
            prompt_tokens: ev.prompt_tokens,
            completion_tokens: state.generated,
            choices: ev.choices,
            echo_prompt,
            prompt_logprobs,
            prompt,
        }
    }
}
