//! The audio APIs over real HTTP on loopback, served by the real tiny.en Whisper model the
//! setup installs (`sluice serve Systran/faster-whisper-tiny.en`):
//! - the official openai client transcribes the committed espeak-ng clips, and the text is
//!   faster-whisper's own (tests/fixtures/audio/transcripts.json, greedy, float32, no
//!   timestamps), in every response format and streamed;
//! - bad input (not audio, an empty file, a missing `file`, an unknown format or language,
//!   a body over the limit, a body that is not a form, a text route) is an OpenAI-shaped
//!   4xx naming what was wrong, and the server goes on serving;
//! - the multilingual base model translates French and German to English, and detects the
//!   language of a transcription, as faster-whisper does;
//! - a text model refuses the audio routes with a 400 naming the routes it serves;
//! - mp3, flac, ogg and m4a uploads, and audio longer than one 30 s window;
//! - run-batch transcribes lines whose audio is a base64 data URL.

mod common;

use common::{Server, fixture, venv_python};
use serde_json::Value;

const WHISPER: &str = "Systran/faster-whisper-tiny.en";
/// float32, so that greedy decoding matches faster-whisper's float32 run; a small body
/// limit to reach 413 cheaply.
const ARGS: &[&str] = &[WHISPER, "--dtype", "float32", "--max-request-body", "512KiB"];

fn server() -> &'static Server {
    Server::shared(ARGS)
}

/// faster-whisper's text for a committed clip.
fn reference(clip: &str) -> String {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture("audio/transcripts.json")).unwrap()).unwrap();
    v["clips"][clip]["faster_whisper_transcribe"].as_str().unwrap().to_string()
}

/// A multipart/form-data body by hand (so that malformed ones can be sent too).
struct Multipart {
    body: Vec<u8>,
}

const BOUNDARY: &str = "sluice-test-boundary-7d3f";

impl Multipart {
    fn new() -> Self {
        Multipart { body: Vec::new() }
    }

    fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
        self
    }

    fn file(mut self, name: &str, filename: &str, bytes: &[u8]) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        self.body
    }
}

fn post_body(s: &Server, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = Server::client().post(s.url(path)).header("content-type", content_type).body(body).send().expect("request");
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn post_form(s: &Server, path: &str, form: Multipart) -> (u16, Value) {
    post_body(s, path, &format!("multipart/form-data; boundary={BOUNDARY}"), form.finish())
}

fn clip(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("audio/{name}.wav"))).unwrap()
}

/// An OpenAI-shaped error with this status whose message names `needle`.
fn assert_error(got: (u16, Value), status: u16, needle: &str) {
    let (code, body) = got;
    assert_eq!(code, status, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    assert!(msg.contains(needle), "the message should name {needle:?}: {msg}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// The openai client (the project venv's) against the server: every format, and a stream.
#[test]
fn openai_client_transcribes_real_speech() {
    let script = r#"
import json, sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
model, clips = sys.argv[2], sys.argv[3:]
out = {}
def f(name): return open(f"{name}", "rb")
for path in clips:
    out.setdefault("json", []).append(c.audio.transcriptions.create(file=f(path), model=model).text)
p = clips[0]
out["text"] = c.audio.transcriptions.create(file=f(p), model=model, response_format="text")
v = c.audio.transcriptions.create(file=f(p), model=model, response_format="verbose_json", timestamp_granularities=["segment"])
out["verbose"] = v.model_dump()
out["srt"] = c.audio.transcriptions.create(file=f(p), model=model, response_format="srt")
out["vtt"] = c.audio.transcriptions.create(file=f(p), model=model, response_format="vtt")
chunks = list(c.audio.transcriptions.create(file=f(p), model=model, language="en", stream=True,
                                            extra_body={"stream_include_usage": True}))
out["stream"] = [ch.model_dump() for ch in chunks]
print(json.dumps(out))
"#;
    let s = server();
    let paths: Vec<String> = ["speech1", "speech2"].iter().map(|c| fixture(&format!("audio/{c}.wav"))).collect();
    let out = std::process::Command::new(venv_python())
        .args(["-c", script, &s.base, WHISPER])
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = [reference("speech1"), reference("speech2")];

    // json: faster-whisper's text for each clip.
    assert_eq!(got["json"][0], want[0].as_str(), "{got}");
    assert_eq!(got["json"][1], want[1].as_str(), "{got}");
    // text: the same text, bare.
    assert_eq!(got["text"].as_str().unwrap().trim(), want[0]);

    // verbose_json: the clip's length, its language, one segment inside the clip, with its tokens.
    let v = &got["verbose"];
    assert_eq!(v["text"], want[0].as_str(), "{v}");
    assert_eq!(v["language"], "english", "{v}");
    let duration = v["duration"].as_f64().unwrap();
    assert!((duration - 55016.0 / 16000.0).abs() < 1e-3, "duration {duration}");
    let segments = v["segments"].as_array().unwrap();
    assert!(!segments.is_empty(), "{v}");
    assert_eq!(segments[0]["start"], 0.0, "{v}");
    let end = segments.last().unwrap()["end"].as_f64().unwrap();
    assert!(end > 1.0 && end <= duration + 0.5, "the last segment ends at {end} s, the clip is {duration} s");
    let joined: String = segments.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert_eq!(joined.trim(), want[0]);
    assert!(segments.iter().all(|s| !s["tokens"].as_array().unwrap().is_empty()), "{v}");

    // srt and vtt: numbered cues with comma or dot milliseconds, the text under them.
    let srt = got["srt"].as_str().unwrap();
    assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:0"), "{srt}");
    assert!(srt.contains(&want[0]), "{srt}");
    let vtt = got["vtt"].as_str().unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:0"), "{vtt}");
    assert!(vtt.contains(&want[0]), "{vtt}");

    // Streamed: text deltas that join into the same text, a stop, then the usage alone.
    let chunks = got["stream"].as_array().unwrap();
    assert!(chunks.len() > 3, "{got}");
    let (usage, deltas) = chunks.split_last().unwrap();
    let text: String = deltas
        .iter()
        .map(|c| {
            assert_eq!(c["object"], "transcription.chunk", "{c}");
            c["choices"][0]["delta"]["content"].as_str().unwrap_or("")
        })
        .collect();
    assert_eq!(text.trim(), want[0]);
    assert_eq!(deltas.last().unwrap()["choices"][0]["finish_reason"], "stop", "{got}");
    assert_eq!(usage["choices"], serde_json::json!([]), "{usage}");
    let u = &usage["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() >= 10, "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
}

/// Raw SSE with usage on every chunk (vLLM's `stream_continuous_usage_stats`), and `[DONE]`.
#[test]
fn stream_with_continuous_usage() {
    let s = server();
    let form = Multipart::new()
        .file("file", "speech2.wav", &clip("speech2"))
        .text("model", WHISPER)
        .text("stream", "true")
        .text("stream_include_usage", "true")
        .text("stream_continuous_usage_stats", "true");
    let r = Server::client()
        .post(s.url("/v1/audio/transcriptions"))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(form.finish())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]", "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let mut text = String::new();
    let mut last_completion = 0;
    for c in &chunks {
        let u = &c["usage"];
        assert!(u.is_object(), "every chunk carries usage: {c}");
        let done = u["completion_tokens"].as_u64().unwrap();
        assert!(done >= last_completion, "{body}");
        last_completion = done;
        if let Some(d) = c["choices"].get(0) {
            text.push_str(d["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(text.trim(), reference("speech2"));
}

#[test]
fn bad_input_is_a_clear_4xx_and_the_server_goes_on() {
    let s = server();
    let path = "/v1/audio/transcriptions";
    let form = || Multipart::new().text("model", WHISPER);

    // Not audio, an empty file, a truncated WAV.
    assert_error(post_form(s, path, form().file("file", "notes.wav", b"these are not the samples you want")), 400, "file");
    assert_error(post_form(s, path, form().file("file", "empty.wav", b"")), 400, "file");
    let wav = clip("speech1");
    assert_error(post_form(s, path, form().file("file", "cut.wav", &wav[..30])), 400, "file");
    // No file at all.
    assert_error(post_form(s, path, form().text("language", "en")), 400, "file");
    // A format the API does not have, a language Whisper does not know, one the model lacks.
    let with = |k: &str, v: &str| form().file("file", "a.wav", &wav).text(k, v);
    assert_error(post_form(s, path, with("response_format", "mp3")), 400, "response_format");
    assert_error(post_form(s, path, with("language", "klingon")), 400, "language");
    assert_error(post_form(s, path, with("temperature", "hot")), 400, "temperature");
    // A body over --max-request-body (512 KiB).
    let big = vec![0u8; 600 * 1024];
    let (status, body) = post_form(s, path, form().file("file", "big.wav", &big));
    assert_eq!(status, 413, "{body}");
    // Not a form.
    let (status, body) = post_body(s, path, "application/json", br#"{"model": "x"}"#.to_vec());
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("multipart/form-data"), "{body}");
    // A text route on the Whisper model names the routes it serves.
    let (status, body) = s.post("/v1/chat/completions", &serde_json::json!({"model": WHISPER, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/audio/transcriptions"), "{body}");

    // An English-only model transcribes but does not translate.
    let (status, body) = post_form(s, "/v1/audio/translations", form().file("file", "a.wav", &wav));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("English-only"), "{body}");

    // And it still transcribes.
    let (status, body) = post_form(s, path, form().file("file", "speech2.wav", &clip("speech2")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], reference("speech2").as_str());
}

/// The multilingual base model: translations to English with the language detected, and
/// transcriptions in the detected language, equal to faster-whisper's texts
/// (tests/fixtures/audio/translations.json, made by make_translation_fixtures.py).
#[test]
fn translations_with_the_multilingual_base_model() {
    let s = Server::shared(&["Systran/faster-whisper-base", "--dtype", "float32"]);
    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("audio/translations.json")).unwrap()).unwrap();
    for (name, language) in [("french", "french"), ("german", "german")] {
        let want = &refs["clips"][name];
        let form = || Multipart::new().file("file", &format!("{name}.wav"), &clip(name)).text("model", "Systran/faster-whisper-base");
        let (status, body) = post_form(s, "/v1/audio/translations", form());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["text"], want["translation"], "{name}");
        let (status, body) = post_form(s, "/v1/audio/transcriptions", form().text("response_format", "verbose_json"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["language"], language, "{body}");
        assert_eq!(body["text"], want["transcription_with_timestamps"], "{name}: {body}");
    }
}

fn http_references() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("audio/long.json")).unwrap()).unwrap()
}

/// mp3, flac, ogg/vorbis and m4a/aac uploads (speech2 at 44.1 kHz stereo, 22.05 kHz mono,
/// 48 kHz stereo and 44.1 kHz mono) are decoded, mixed and resampled by the audio stage:
/// each text is faster-whisper's on the same file.
#[test]
fn every_container_through_http() {
    let s = server();
    let refs = http_references();
    for ext in ["mp3", "flac", "ogg", "m4a"] {
        let bytes = std::fs::read(fixture(&format!("audio/speech2.{ext}"))).unwrap();
        let (status, body) = post_form(s, "/v1/audio/transcriptions", Multipart::new().file("file", &format!("speech2.{ext}"), &bytes).text("model", WHISPER));
        assert_eq!(status, 200, "{ext}: {body}");
        assert_eq!(body["text"], refs["speech2_containers"][ext], "{ext}");
    }
}

/// 46 s of speech (long.mp3) is cut into two windows at a quiet point, as vLLM cuts it;
/// the joined text is faster-whisper's, and verbose_json's segments run on the audio's
/// clock across both windows.
#[test]
fn audio_longer_than_one_window() {
    let s = server();
    let refs = http_references();
    let bytes = std::fs::read(fixture("audio/long.mp3")).unwrap();
    let form = || Multipart::new().file("file", "long.mp3", &bytes).text("model", WHISPER);
    let (status, body) = post_form(s, "/v1/audio/transcriptions", form());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], refs["faster_whisper_transcribe"]);

    let (status, body) = post_form(s, "/v1/audio/transcriptions", form().text("response_format", "verbose_json"));
    assert_eq!(status, 200, "{body}");
    let duration = refs["duration"].as_f64().unwrap();
    assert!((body["duration"].as_f64().unwrap() - duration).abs() < 0.1, "{body}");
    let segments = body["segments"].as_array().unwrap();
    let times: Vec<(f64, f64)> =
        segments.iter().map(|g| (g["start"].as_f64().unwrap(), g["end"].as_f64().unwrap())).collect();
    assert!(times.windows(2).all(|w| w[0].0 <= w[0].1 && w[0].1 <= w[1].0 + 1e-6), "{times:?}");
    assert!(times.iter().any(|t| t.0 < 30.0) && times.iter().any(|t| t.0 > 30.0), "segments in both windows: {times:?}");
    assert!(times.last().unwrap().1 <= duration + 0.5, "{times:?}");
    // The last sentence is in the second window's text.
    assert!(body["text"].as_str().unwrap().contains("by two points"), "{body}");
}

/// A text model has no audio routes: 400, naming the routes it does serve.
#[test]
fn a_text_model_refuses_audio() {
    let s = Server::shared(&["--dtype", "float32"]);
    let form = Multipart::new().file("file", "speech1.wav", &clip("speech1")).text("model", common::MODEL);
    let (status, body) = post_form(s, "/v1/audio/transcriptions", form);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/chat/completions"), "{body}");
}

/// run-batch takes transcription lines with the audio as a base64 `data:` URL in
/// `file_url` (batch lines are JSON, not multipart): a good line gets the server's text, a
/// line whose file is not audio gets the server's 400, in input order; the summary counts
/// the tokens transcribed.
#[test]
fn run_batch_transcribes_data_url_lines() {
    use base64::Engine as _;
    let url = |bytes: &[u8]| format!("data:audio/wav;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    let line = |id: &str, file: &[u8]| {
        serde_json::json!({"custom_id": id, "method": "POST", "url": "/v1/audio/transcriptions",
                           "body": {"model": WHISPER, "file_url": url(file)}})
    };
    let (lines, log) = common::run_batch_lines(
        &[WHISPER, "--dtype", "float32"],
        &[line("good", &clip("speech2")), line("bad", b"not audio at all")],
    );
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custom_id"], "good");
    assert_eq!(lines[0]["response"]["status_code"], 200, "{}", lines[0]);
    assert_eq!(lines[0]["response"]["body"]["text"], reference("speech2").as_str());
    assert_eq!(lines[1]["custom_id"], "bad");
    assert_eq!(lines[1]["response"]["status_code"], 400, "{}", lines[1]);
    assert_eq!(lines[1]["error"]["param"], "file", "{}", lines[1]);
    // The progress figures count the transcript's tokens (the good line's nine words and
    // marks, and its end), though a transcription's usage counts seconds.
    let done = log.lines().find(|l| l.contains("done:")).unwrap_or_else(|| panic!("no summary line: {log}"));
    let tokens: u64 = done.split(" output tokens").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(tokens >= 9, "{done}");
}
