//! Whisper in Rust against its references:
//! - a tiny random-weight Whisper saved by transformers (tests/fixtures/tiny-whisper, made by
//!   tests/fixtures/reference/make_tiny_whisper.py): the encoder output within 1e-4 and the
//!   greedy tokens of `generate` (transcribe, translate with timestamps, language detection,
//!   a previous-text prompt), all decoded together in one batch through the paged cache;
//! - the CTranslate2 reader on the real tiny.en `model.bin` the setup installs;
//! - tiny.en end to end (wav → 16 kHz → log-mel → encoder → greedy decoder → text) on two
//!   committed espeak-ng clips: with transformers' window padding, token for token what
//!   CTranslate2 (faster-whisper's engine) decodes greedily from transformers' features of the
//!   same samples; with faster-whisper's padding, faster-whisper's own text.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::audio::features::{FeatureExtractor, MelConfig, Padding};
use sluice::model::ct2::{Ct2Dtype, Ct2Model};
use sluice::model::resolve::{self, DEFAULT_WHISPER_ID};
use sluice::model::whisper::greedy::{GreedyRequest, detect_languages, greedy};
use sluice::model::whisper::prompt::{PromptSpec, decoder_prompt};
use sluice::model::whisper::rules::DecodeRules;
use sluice::model::whisper::tokens::Task;
use sluice::model::whisper::{self, LoadedWhisper, WhisperFormat};
use tch::{Device, Kind, Tensor};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// The reference script's LCG features: x ← 1664525·x + 1013904223 (mod 2³²), value
/// (x >> 8) / 2²³ − 1, row-major `[80, 3000]`.
fn lcg_features(seed: u32) -> Tensor {
    let mut x = seed;
    let v: Vec<f32> = (0..80 * 3000)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            ((x >> 8) as f64 / (1u64 << 23) as f64 - 1.0) as f32
        })
        .collect();
    Tensor::from_slice(&v).view([1, 80, 3000])
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn tiny(dtype: &str) -> LoadedWhisper {
    one_thread();
    let m = whisper::load(&fixture("tiny-whisper"), dtype, Device::Cpu).unwrap();
    assert_eq!(m.format, WhisperFormat::HuggingFace);
    m
}

/// Tokens before the first step whose reference margin is below `tie` (where float noise may
/// pick the other token), compared; returns how many were compared.
fn same_until_near_tie(id: &str, got: &[u32], want: &[u32], margins: &[f32], tie: f32) -> usize {
    let n = margins.iter().position(|&m| m < tie).unwrap_or(want.len());
    assert_eq!(&got[..n.min(got.len())], &want[..n], "{id}: tokens differ before the first near-tie");
    n
}

#[test]
fn tiny_whisper_matches_transformers_in_float32() {
    let m = tiny("float32");
    let reference = json("reference/tiny_whisper_f32.json");
    let _guard = tch::no_grad_guard();

    // Encoder output: four full rows and every row's sum.
    let mut encoded = std::collections::HashMap::new();
    for seed in [1u32, 2] {
        let enc = m.model.encode(&lcg_features(seed)).unwrap().get(0);
        let r = &reference["encoder"][seed.to_string()];
        for (row, want) in r["rows"].as_object().unwrap() {
            let got: Vec<f32> = Vec::try_from(enc.get(row.parse::<i64>().unwrap())).unwrap();
            let diff = got.iter().zip(floats(want)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "seed {seed} row {row}: largest difference {diff}");
        }
        let sums: Vec<f32> = Vec::try_from(enc.sum_dim_intlist(-1, false, Kind::Float)).unwrap();
        let diff = sums.iter().zip(floats(&r["row_sums"])).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "seed {seed}: row sums differ by up to {diff}");
        encoded.insert(seed, enc);
    }
    let cross: std::collections::HashMap<u32, _> = encoded.iter().map(|(s, e)| (*s, m.model.decoder.cross_kv(e))).collect();

    // Language detection from the first step.
    let detected = detect_languages(&m.model, &m.tokens, &[&cross[&2]]).unwrap();
    let items = reference["items"].as_array().unwrap();
    let detect_item = items.iter().find(|i| i["id"] == "detect_language").unwrap();
    assert_eq!(detected[0], Some(ids(&detect_item["decoder_prompt"])[1]), "detected language");

    // Every case in one batch: prompts built by our rules equal the reference's.
    let mut requests = Vec::new();
    for item in items {
        let seed = item["features_seed"].as_u64().unwrap() as u32;
        let language = match item["language"].as_str() {
            Some(l) => m.tokens.language(l).unwrap(),
            None => detected[0],
        };
        let task = if item["task"] == "translate" { Task::Translate } else { Task::Transcribe };
        let timestamps = item["timestamps"].as_bool().unwrap();
        let previous: Vec<u32> = item["prompt_ids"].as_array().map(|p| ids(&Value::from(p[1..].to_vec()))).unwrap_or_default();
        let spec = PromptSpec { language, task, timestamps, previous: &previous };
        let prompt = decoder_prompt(&m.tokens, &spec, m.model.cfg.max_target_positions).unwrap();
        assert_eq!(prompt, ids(&item["decoder_prompt"]), "{}: decoder prompt", item["id"]);
        requests.push(GreedyRequest {
            cross: &cross[&seed],
            prompt,
            rules: DecodeRules::new(&m.tokens, timestamps),
            max_new_tokens: item["output_ids"].as_array().unwrap().len(),
        });
    }
    let outputs = greedy(&m.model, m.tokens.eot, &requests).unwrap();
    let mut compared = 0;
    for (item, got) in items.iter().zip(&outputs) {
        let id = item["id"].as_str().unwrap();
        compared += same_until_near_tie(id, got, &ids(&item["output_ids"]), &floats(&item["margins"]), 1e-3);
    }
    assert!(compared >= 100, "only {compared} tokens compared");

    // The first step's raw log-probabilities.
    for (item, r) in items.iter().zip(&requests) {
        let prompt = &r.prompt;
        let batch = sluice::model::batch::StepBatch::new(
            &[sluice::model::batch::SeqChunk {
                tokens: prompt.clone(),
                cached: 0,
                block_table: vec![1, 2],
                logits_for: vec![prompt.len() - 1],
                prompt_len: prompt.len(),
            }],
            16,
        );
        let mut cache = m.model.decoder.new_cache(3, 16);
        let logits = m.model.decoder.forward(&batch, &mut cache, &[r.cross]).unwrap();
        let lp = logits.log_softmax(-1, Kind::Float).get(0);
        for pair in item["first_step_top5"].as_array().unwrap() {
            let (tok, want) = (pair[0].as_i64().unwrap(), pair[1].as_f64().unwrap());
            let got = lp.double_value(&[tok]);
            assert!((got - want).abs() < 1e-4, "{}: logprob of {tok} is {got}, reference {want}", item["id"]);
        }
    }
}

#[test]
fn tiny_whisper_runs_in_bfloat16_and_float16() {
    let reference = json("reference/tiny_whisper_f32.json");
    let _guard = tch::no_grad_guard();
    for dtype in ["bfloat16", "float16"] {
        let m = tiny(dtype);
        let features = Tensor::cat(&[lcg_features(1), lcg_features(2)], 0);
        let enc = m.model.encode(&features).unwrap();
        let mut cross = Vec::new();
        for (i, seed) in ["1", "2"].iter().enumerate() {
            let e = enc.get(i as i64);
            let want_row = floats(&reference["encoder"][seed]["rows"]["0"]);
            let got: Vec<f32> = Vec::try_from(e.get(0).to_kind(Kind::Float)).unwrap();
            let diff = got.iter().zip(&want_row).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 0.1, "{dtype}: encoder row 0 of seed {seed} differs by up to {diff}");
            cross.push(m.model.decoder.cross_kv(&e));
        }
        let items = reference["items"].as_array().unwrap();
        let requests: Vec<GreedyRequest> = items
            .iter()
            .map(|item| GreedyRequest {
                cross: &cross[item["features_seed"].as_u64().unwrap() as usize - 1],
                prompt: ids(&item["decoder_prompt"]),
                rules: DecodeRules::new(&m.tokens, item["timestamps"].as_bool().unwrap()),
                max_new_tokens: item["output_ids"].as_array().unwrap().len(),
            })
            .collect();
        let outputs = greedy(&m.model, m.tokens.eot, &requests).unwrap();
        let mut compared = 0;
        for (item, got) in items.iter().zip(&outputs) {
            // Reduced precision follows float32 while the float32 choice was clear.
            compared += same_until_near_tie(dtype, got, &ids(&item["output_ids"]), &floats(&item["margins"]), 0.5);
        }
        assert!(compared >= 10, "{dtype}: only {compared} tokens compared");
    }
}

/// One libtorch thread: these small models gain little from more, and on a loaded machine
/// every parallel region of a step would wait for a second thread to be scheduled.
fn one_thread() {
    tch::set_num_threads(1);
}

fn tiny_en_dir() -> PathBuf {
    resolve::resolve(Some(DEFAULT_WHISPER_ID))
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh, which installs it)"))
        .path()
        .to_owned()
}

#[test]
fn ct2_reader_reads_tiny_en() {
    let dir = tiny_en_dir();
    let m = Ct2Model::open(&dir.join("model.bin")).unwrap();
    assert_eq!((m.version, m.spec.as_str(), m.revision), (6, "WhisperSpec", 3));
    assert_eq!(m.variables().len(), 148);
    let v = m.variable("decoder/embeddings/weight").unwrap();
    assert_eq!((v.shape.as_slice(), v.dtype), (&[51864, 384][..], Ct2Dtype::F16));
    let v = m.variable("encoder/layer_3/self_attention/linear_0/weight").unwrap();
    assert_eq!((v.shape.as_slice(), v.num_bytes()), (&[1152, 384][..], 1152 * 384 * 2));
    assert_eq!(m.variable("decoder/layer_0/attention/linear_1/bias").unwrap().shape, [768]);
    assert_eq!(m.variable("encoder/conv1/weight").unwrap().shape, [384, 80, 3]);
    assert_eq!(m.aliases().get("decoder/projection/weight").map(String::as_str), Some("decoder/embeddings/weight"));
    assert_eq!(m.scalar_int("decoder/num_heads"), Some(6));
    assert_eq!(m.variable("decoder/activation").unwrap().dtype, Ct2Dtype::I8);

    // The split fused projections are the rows of the fused tensor, and K has no bias.
    let src = sluice::model::whisper::weights::Ct2Weights { model: &m };
    use sluice::model::weights::WeightSource;
    let fused = m.tensor("encoder/layer_0/self_attention/linear_0/weight").unwrap();
    let v = src.get("model.encoder.layers.0.self_attn.v_proj.weight").unwrap().unwrap();
    assert!(v.equal(&fused.narrow(0, 768, 384)));
    let k_bias = src.get("model.decoder.layers.2.encoder_attn.k_proj.bias").unwrap().unwrap();
    assert_eq!(k_bias.abs().sum(Kind::Float).double_value(&[]), 0.0);

    // A truncated or corrupted copy is an error, not a panic.
    let bytes = std::fs::read(dir.join("model.bin")).unwrap();
    let tmp = std::env::temp_dir().join(format!("sluice-ct2-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let path = tmp.join("model.bin");
    for cut in [0, 3, 20, 1000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Ct2Model::open(&path).unwrap_err().to_string();
        assert!(err.contains("ends inside") || err.contains("more than the file"), "cut at {cut}: {err}");
    }
    let mut corrupt = bytes[..4096].to_vec();
    corrupt[0x2f] = 200; // the first variable's rank
    std::fs::write(&path, &corrupt).unwrap();
    assert!(Ct2Model::open(&path).is_err());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// tiny.en's greedy tokens for the committed clips, with the window filled as `padding` says.
fn transcribe_clips(m: &LoadedWhisper, clips: &[&str], padding: Padding) -> Vec<Vec<u32>> {
    let fe = FeatureExtractor::new(m.mel.clone());
    let _guard = tch::no_grad_guard();
    let mut features = Vec::new();
    for clip in clips {
        let bytes = std::fs::read(fixture(&format!("audio/{clip}.wav"))).unwrap();
        let samples = sluice::audio::load(bytes, Some("wav"), 60).unwrap();
        features.push(Tensor::from_slice(&fe.extract_padded(&samples, padding)).view([1, 80, 3000]));
    }
    let encoded = m.model.encode(&Tensor::cat(&features, 0)).unwrap();
    let cross: Vec<_> = (0..clips.len() as i64).map(|i| m.model.decoder.cross_kv(&encoded.get(i))).collect();
    let spec = PromptSpec { language: None, task: Task::Transcribe, timestamps: false, previous: &[] };
    let prompt = decoder_prompt(&m.tokens, &spec, m.model.cfg.max_target_positions).unwrap();
    assert_eq!(prompt, [50257, 50362]);
    let requests: Vec<GreedyRequest> = cross
        .iter()
        .map(|c| GreedyRequest { cross: c, prompt: prompt.clone(), rules: DecodeRules::new(&m.tokens, false), max_new_tokens: 100 })
        .collect();
    greedy(&m.model, m.tokens.eot, &requests).unwrap()
}

#[test]
fn tiny_en_transcribes_the_committed_clips_as_the_references_do() {
    one_thread();
    let m = whisper::load(&tiny_en_dir(), "float32", Device::Cpu).unwrap();
    assert_eq!(m.format, WhisperFormat::Ct2);
    assert!(!m.tokens.multilingual);
    assert_eq!(m.mel, MelConfig::whisper(80));
    let reference = json("audio/transcripts.json");
    let clips = ["speech1", "speech2"];
    // transformers' padding: token for token what CTranslate2 decodes from the same features.
    for (clip, out) in clips.iter().zip(transcribe_clips(&m, &clips, Padding::Samples)) {
        assert_eq!(out.last(), Some(&m.tokens.eot), "{clip}: ended without <|endoftext|>");
        assert_eq!(out[..out.len() - 1], ids(&reference["clips"][clip]["ctranslate2_tokens"]), "{clip}: tokens");
        assert_eq!(m.decode_text(&out).trim(), reference["clips"][clip]["ctranslate2_text"].as_str().unwrap(), "{clip}");
    }
    // faster-whisper's padding: faster-whisper's own text.
    for (clip, out) in clips.iter().zip(transcribe_clips(&m, &clips, Padding::Features)) {
        assert_eq!(m.decode_text(&out).trim(), reference["clips"][clip]["faster_whisper_transcribe"].as_str().unwrap(), "{clip}");
    }
}

#[test]
fn base_is_installed_joined_and_multilingual() {
    use sluice::model::resolve::WHISPER_BASE_ID;
    use sluice::model::tokenizer::Tokenizer;
    use sluice::model::whisper::config::WhisperConfig;
    use sluice::model::whisper::tokens::WhisperTokens;
    let dir = resolve::resolve(Some(WHISPER_BASE_ID)).unwrap().path().to_owned();
    assert_eq!(whisper::detect(&dir), Some(WhisperFormat::Ct2));
    let m = Ct2Model::open(&dir.join("model.bin")).unwrap();
    let cfg = WhisperConfig::from_ct2(&m).unwrap();
    assert_eq!((cfg.d_model, cfg.encoder_layers, cfg.decoder_heads, cfg.vocab_size), (512, 6, 8, 51865));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tok = Tokenizer::from_hf_file(&dir.join("tokenizer.json"), None).unwrap();
    let t = WhisperTokens::from_ct2(&config, &tok, cfg.vocab_size).unwrap();
    assert!(t.multilingual);
    assert_eq!((t.languages.len(), t.language("en"), t.language("German")), (99, Ok(Some(50259)), Ok(Some(50261))));
    assert_eq!((t.sot, t.transcribe, t.translate, t.no_timestamps), (50258, Some(50359), Some(50358), 50363));
}

#[test]
fn other_folders_are_not_whisper() {
    let err = whisper::load(&fixture("tiny-llama"), "float32", Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a Whisper model folder"), "{err}");
}
