//! The audio APIs' answers: `json` (`{"text"}`), `text`, `srt`, `vtt`, `verbose_json`
//! (OpenAI's shape: task, language, duration, text, segments), and the stream chunks vLLM
//! sends (`transcription.chunk` / `translation.chunk` with text deltas).
//!
//! Segments come from the timestamp tokens Whisper writes when asked for them: text
//! between two timestamps is one segment, from the first to the second, offset by where
//! its 30 s window starts in the audio.

use std::io::Write;

use serde::Serialize;

use crate::api::protocol::Usage;
use crate::api::request_metrics::RequestMetrics;

/// `usage` of a transcription: the audio's seconds, rounded up (OpenAI's and vLLM's).
#[derive(Debug, Clone, Serialize)]
pub struct DurationUsage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seconds: u64,
}

impl DurationUsage {
    pub fn of(duration: f64) -> Self {
        DurationUsage { kind: "duration", seconds: duration.ceil() as u64 }
    }
}

/// `response_format: json`.
#[derive(Debug, Serialize)]
pub struct TextResponse {
    pub text: String,
    /// Transcriptions only (vLLM sends none with translations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<DurationUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RequestMetrics>,
}

/// `response_format: verbose_json`.
#[derive(Debug, Serialize)]
pub struct VerboseResponse {
    pub task: &'static str,
    /// The language's English name (`english`), as OpenAI answers.
    pub language: String,
    pub duration: f64,
    pub text: String,
    pub segments: Vec<Segment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<DurationUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RequestMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub id: usize,
    /// Where the segment's window starts, in mel frames (10 ms), as openai-whisper's `seek`.
    pub seek: u64,
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// The segment's text tokens.
    pub tokens: Vec<u32>,
    pub temperature: f32,
    /// Mean logprob of the segment's tokens (its text and closing timestamp).
    pub avg_logprob: f64,
    /// Bytes of the text over bytes of its zlib compression (high: repetitive text).
    pub compression_ratio: f64,
    /// Not computed (vLLM leaves it out too).
    pub no_speech_prob: Option<f64>,
}

/// A streamed chunk: a text delta, the finish, or (with no choices) the usage.
#[derive(Debug, Serialize)]
pub struct StreamChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<StreamChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RequestMetrics>,
}

#[derive(Debug, Serialize)]
pub struct StreamChoice {
    pub delta: Delta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct Delta {
    pub content: String,
}

/// One window's tokens cut at its timestamps: (start, end, tokens of the text, logprobs of
/// the segment's tokens), times in seconds from the window's start. Text before any
/// timestamp starts at 0; text left open at the end closes at `window_len`.
pub fn cut_segments(
    tokens: &[u32],
    logprobs: &[f32],
    is_timestamp: impl Fn(u32) -> Option<f64>,
    window_len: f64,
) -> Vec<(f64, f64, Vec<u32>, Vec<f32>)> {
    let mut out = Vec::new();
    let mut start: Option<f64> = None;
    let mut last_time = 0.0f64;
    let mut text = Vec::new();
    let mut lps = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        let lp = logprobs.get(i).copied();
        match is_timestamp(t) {
            Some(time) => {
                let time = time.min(window_len);
                if !text.is_empty() {
                    lps.extend(lp);
                    let s = start.unwrap_or(last_time);
                    out.push((s, time.max(s), std::mem::take(&mut text), std::mem::take(&mut lps)));
                    start = None;
                } else if start.is_none() {
                    start = Some(time);
                    lps.clear();
                }
                last_time = time;
            }
            None => {
                if start.is_none() {
                    start = Some(last_time);
                }
                text.push(t);
                lps.extend(lp);
            }
        }
    }
    if !text.is_empty() {
        let s = start.unwrap_or(last_time);
        out.push((s, window_len.max(s), text, lps));
    }
    out
}

/// `len(text) / len(zlib(text))` in bytes, as openai-whisper computes it (level 6).
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    let _ = z.write_all(text.as_bytes());
    let compressed = z.finish().map(|v| v.len()).unwrap_or(text.len());
    text.len() as f64 / compressed.max(1) as f64
}

/// `HH:MM:SS,mmm` (SubRip) or `HH:MM:SS.mmm` (WebVTT).
fn clock(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// The segments as a SubRip file.
pub fn srt(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        out.push_str(&format!("{}\n{} --> {}\n{}\n\n", i + 1, clock(s.start, ','), clock(s.end, ','), s.text.trim()));
    }
    out
}

/// The segments as a WebVTT file.
pub fn vtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in segments {
        out.push_str(&format!("{} --> {}\n{}\n\n", clock(s.start, '.'), clock(s.end, '.'), s.text.trim()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens 1000.. are timestamps of (t - 1000) · 0.02 s.
    fn ts(t: u32) -> Option<f64> {
        (t >= 1000).then(|| (t - 1000) as f64 * 0.02)
    }

    #[test]
    fn segments_between_timestamps() {
        // <0.00> a b <1.00><1.00> c <2.00> d   (the last left open)
        let toks = [1000, 1, 2, 1050, 1050, 3, 1100, 4];
        let lps = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8];
        let segs = cut_segments(&toks, &lps, ts, 30.0);
        assert_eq!(segs.len(), 3);
        assert_eq!((segs[0].0, segs[0].1, segs[0].2.clone(), segs[0].3.clone()), (0.0, 1.0, vec![1, 2], vec![-0.2, -0.3, -0.4]));
        assert_eq!((segs[1].0, segs[1].1, segs[1].2.clone()), (1.0, 2.0, vec![3]));
        assert_eq!((segs[2].0, segs[2].1, segs[2].2.clone()), (2.0, 30.0, vec![4]));
        // No timestamps at all: one segment over the window.
        let segs = cut_segments(&[5, 6], &[], ts, 12.5);
        assert_eq!((segs.len(), segs[0].0, segs[0].1), (1, 0.0, 12.5));
        // Only timestamps: nothing.
        assert!(cut_segments(&[1000, 1010], &[], ts, 30.0).is_empty());
    }

    #[test]
    fn subrip_and_webvtt() {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![],
            temperature: 0.0,
            avg_logprob: 0.0,
            compression_ratio: 1.0,
            no_speech_prob: None,
        };
        let segs = [seg(0, 0.0, 2.5, " Hello there."), seg(1, 3661.25, 3662.0, " Bye.")];
        assert_eq!(srt(&segs), "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:02,000\nBye.\n\n");
        assert_eq!(vtt(&segs), "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.250 --> 01:01:02.000\nBye.\n\n");
    }

    #[test]
    fn repetitive_text_compresses_well() {
        assert!(compression_ratio(&"la ".repeat(100)) > 10.0);
        assert!(compression_ratio("The quick brown fox.") < 1.5);
        assert_eq!(compression_ratio(""), 0.0);
    }
}
