//! The loop of a stage that answers a request from all of its text events (`stream`,
//! `transcribe_stream`): state per request, made at the request's first event and
//! dropped once the stage says the request is answered.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pipeline::Inlet;
use crate::stages::item::{Item, Payload, RequestCtx, TextEvent};

/// Feeds each text event to `on_event` with its request's state (made by `fresh` from the
/// first event); `on_event` returns true when the request is answered.
pub fn per_request<S>(
    inlet: Inlet<Item>,
    stage: &str,
    mut fresh: impl FnMut(&TextEvent) -> S,
    mut on_event: impl FnMut(&Arc<RequestCtx>, &mut S, TextEvent) -> bool,
) {
    let mut pending: HashMap<u64, S> = HashMap::new();
    while let Some(item) = inlet.recv() {
        let service = inlet.begin_service(&item);
        let request = item.ctx.key;
        let handled = inlet.contain(item, |item| {
            let Payload::Text(ev) = item.payload else { unreachable!("{stage} takes text events") };
            let ctx = item.ctx;
            let state = pending.entry(ctx.key).or_insert_with(|| fresh(&ev));
            if on_event(&ctx, state, ev) {
                pending.remove(&ctx.key);
            }
        });
        if !handled {
            // The request has failed: its state goes with it.
            pending.remove(&request);
        }
        inlet.end_service(service);
    }
}
