//! Transcribes audio files with a Whisper model through the library alone (no server):
//! decode, resample, log-mel, encoder, then greedy decoding of every window of every file
//! together in one batch. Prints one JSON line per file. Used by
//! scripts/whisper_agreement.py to compare with faster-whisper.
//!
//!     cargo run --release --example transcribe -- [--dtype D] [--language L] [--task T]
//!         [--padding samples|features] MODEL FILE...
//!
//! MODEL is a folder or an installed id (Systran/faster-whisper-tiny.en). `--padding`: how
//! a window is filled after the audio (`samples`: transformers' and vLLM's; `features`:
//! openai-whisper's `transcribe` and faster-whisper's, the default).

use std::path::Path;

use anyhow::{Context, Result, bail};
use sluice::audio::features::{FeatureExtractor, Padding};
use sluice::audio::split::{SplitConfig, split};
use sluice::model::resolve;
use sluice::model::whisper::greedy::{GreedyRequest, detect_languages, greedy};
use sluice::model::whisper::prompt::{PromptSpec, decoder_prompt};
use sluice::model::whisper::rules::DecodeRules;
use sluice::model::whisper::tokens::Task;
use tch::{Device, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dtype, mut language, mut task, mut rest) = ("float32".to_string(), None, Task::Transcribe, Vec::new());
    let mut padding = Padding::Features;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dtype" => dtype = args.next().context("--dtype needs a value")?,
            "--language" => language = Some(args.next().context("--language needs a value")?),
            "--task" => {
                task = match args.next().as_deref() {
                    Some("transcribe") => Task::Transcribe,
                    Some("translate") => Task::Translate,
                    other => bail!("--task must be transcribe or translate, got {other:?}"),
                }
            }
            "--padding" => {
                padding = match args.next().as_deref() {
                    Some("samples") => Padding::Samples,
                    Some("features") => Padding::Features,
                    other => bail!("--padding must be samples or features, got {other:?}"),
                }
            }
            _ => rest.push(a),
        }
    }
    let (model, files) = rest.split_first().context("usage: transcribe [--dtype D] [--language L] MODEL FILE...")?;
    tch::set_num_threads(std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2));
    let loc = resolve::resolve(Some(model))?;
    let m = sluice::model::whisper::load(loc.path(), &dtype, Device::Cpu)?;
    let fe = FeatureExtractor::new(m.mel.clone());
    let _guard = tch::no_grad_guard();

    // Every window of every file, in order.
    let mut windows: Vec<(usize, Vec<f32>)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).with_context(|| f.clone())?;
        let ext = Path::new(f).extension().and_then(|e| e.to_str());
        let samples = sluice::audio::load(bytes, ext, 3600).with_context(|| f.clone())?;
        for r in split(&samples, SplitConfig::vllm(sluice::audio::SAMPLE_RATE)) {
            windows.push((i, fe.extract_padded(&samples[r], padding)));
        }
    }
    let (mels, frames) = (m.mel.n_mels as i64, m.mel.window_frames() as i64);
    let feats: Vec<Tensor> = windows.iter().map(|(_, f)| Tensor::from_slice(f).view([1, mels, frames])).collect();
    let encoded = m.model.encode(&Tensor::cat(&feats, 0)).map_err(anyhow::Error::msg)?;
    let cross: Vec<_> = (0..windows.len() as i64).map(|i| m.model.decoder.cross_kv(&encoded.get(i))).collect();
    let languages = match (&language, m.tokens.multilingual) {
        (Some(l), _) => vec![m.tokens.language(l).map_err(anyhow::Error::msg)?; windows.len()],
        (None, true) => detect_languages(&m.model, &m.tokens, &cross.iter().collect::<Vec<_>>())?,
        (None, false) => vec![None; windows.len()],
    };
    let max_pos = m.model.cfg.max_target_positions;
    let requests = cross
        .iter()
        .zip(&languages)
        .map(|(c, &lang)| {
            let spec = PromptSpec { language: lang, task, timestamps: false, previous: &[] };
            let prompt = decoder_prompt(&m.tokens, &spec, max_pos).map_err(anyhow::Error::msg)?;
            let max_new_tokens = max_pos - prompt.len();
            Ok(GreedyRequest { cross: c, prompt, rules: DecodeRules::new(&m.tokens, false), max_new_tokens })
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = greedy(&m.model, m.tokens.eot, &requests)?;
    for (i, f) in files.iter().enumerate() {
        let mut text = String::new();
        let mut tokens = Vec::new();
        for ((w, _), out) in windows.iter().zip(&outputs) {
            if *w == i {
                text.push_str(&m.decode_text(out));
                tokens.extend(out.iter().copied().filter(|&t| t < m.tokens.eot));
            }
        }
        let lang = windows.iter().position(|(w, _)| *w == i).and_then(|j| languages[j]).and_then(|l| m.tokens.language_code(l));
        println!("{}", serde_json::json!({"file": f, "text": text.trim(), "tokens": tokens, "language": lang}));
    }
    Ok(())
}
