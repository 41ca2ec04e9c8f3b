//! The incremental detokenizer and the stop matcher, fed as a stream's tokens are: token
//! ids (any, in or out of the vocabulary) decoded one by one, the text cut at arbitrary
//! points into the stop matcher. Checked as it goes: what the matcher lets through plus
//! what it holds always equals the text it was given up to its stop.
//!
//! Input: a header byte (flags), a stop-string section (stops separated by 0xFF, ended by
//! 0xFE), then little-endian u16 pairs: token ids (scaled over the vocabulary and past it).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::detok::{IncrementalDecoder, StopMatcher};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let end = rest.iter().position(|&b| b == 0xFE).unwrap_or(rest.len());
    let stops: Vec<String> = rest[..end]
        .split(|&b| b == 0xFF)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| !s.is_empty())
        .take(8)
        .collect();
    let ids: Vec<u32> = rest.get(end + 1..).unwrap_or(&[]).chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .take(512)
        .collect();
    let tok = &common::chat_serving().tokenizer;
    let vocab = tok.vocab_size() as u32;
    // Mostly in the vocabulary; a few ids past it, as a bad model or a guide could give.
    let ids: Vec<u32> = ids.into_iter().map(|i| if i >= 0xFF00 { vocab + (i & 0xFF) } else { i % vocab }).collect();
    let prompt_len = (flags & 0x7) as usize % (ids.len() + 1);
    let (prompt, generated) = ids.split_at(prompt_len);
    let mut decoder = IncrementalDecoder::new(prompt, flags & 0x8 != 0);
    let mut matcher = StopMatcher::new(stops.clone(), flags & 0x10 != 0);
    let mut given = String::new();
    let mut released = String::new();
    let mut stopped = None;
    for (i, &id) in generated.iter().enumerate() {
        let mut text = decoder.push(tok, id);
        let last = i + 1 == generated.len();
        if last {
            text.push_str(&decoder.flush(tok));
        }
        given.push_str(&text);
        let r = matcher.push(&text, last);
        released.push_str(&r.text);
        if r.stopped.is_some() {
            stopped = r.stopped;
            break;
        }
    }
    match &stopped {
        None => assert!(given.starts_with(&released), "released text is not a prefix of the text given"),
        Some(stop) => {
            assert!(stops.contains(stop), "stopped on {stop:?}, not one of the stops");
            let kept = released.strip_suffix(stop.as_str()).unwrap_or(&released);
            assert!(given.starts_with(kept), "released text before the stop is not a prefix of the text given");
        }
    }
});
