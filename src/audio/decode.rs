//! Audio files to samples, with symphonia: pure Rust demuxers and decoders for the formats
//! OpenAI's transcription API takes (wav, mp3, flac, ogg/vorbis, m4a/mp4 with aac), no system
//! libraries. The file's own bytes decide the format; the extension is only a hint.
//!
//! Untrusted input: a file that is not audio, has no audio track, uses another codec, or
//! yields no samples is an error; so is one longer than the caller allows, found while
//! decoding, before the samples of a decompression bomb pile up. A packet that fails to
//! decode is skipped, as players do; a file whose every packet fails is an error.

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::{AudioError, mono};

/// Mono samples at the file's own rate.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in the file (before the mono mix).
    pub channels: usize,
}

impl Decoded {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes a whole file, mixing its channels to mono.
pub fn decode(bytes: Vec<u8>, extension: Option<&str>, max_seconds: u64) -> Result<Decoded, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| AudioError::NotAudio(e.to_string()))?;
    let track = format.default_track(TrackType::Audio).ok_or(AudioError::NoTrack)?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(AudioError::NoTrack)?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::UnsupportedCodec(e.to_string()))?;

    let mut samples = Vec::new();
    let mut scratch: Vec<f32> = Vec::new();
    let mut rate = params.sample_rate;
    let mut channels = 0usize;
    let mut failed = 0usize;
    let mut decoded_packets = 0usize;
    let mut last_error = String::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A file cut short ends where it was cut.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                if decoded_packets == 0 {
                    return Err(AudioError::Corrupt(e.to_string()));
                }
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(SymError::DecodeError(e)) => {
                failed += 1;
                last_error = e.to_string();
                continue;
            }
            Err(SymError::IoError(e)) => {
                failed += 1;
                last_error = e.to_string();
                continue;
            }
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        decoded_packets += 1;
        let spec = buf.spec();
        let this_rate = spec.rate();
        match rate {
            None => rate = Some(this_rate),
            Some(r) if r != this_rate => {
                return Err(AudioError::Corrupt(format!("the sample rate changes from {r} Hz to {this_rate} Hz")));
            }
            Some(_) => {}
        }
        channels = buf.num_planes();
        buf.copy_to_vec_interleaved(&mut scratch);
        mono::mix_interleaved(&scratch, channels, &mut samples);
        if samples.len() as u64 > max_seconds.saturating_mul(this_rate as u64) {
            return Err(AudioError::TooLong { max_seconds });
        }
    }
    if decoded_packets == 0 && failed > 0 {
        return Err(AudioError::Corrupt(last_error));
    }
    let sample_rate = rate.ok_or(AudioError::Empty)?;
    if sample_rate == 0 || sample_rate > 384_000 {
        return Err(AudioError::BadRate(sample_rate));
    }
    if samples.is_empty() {
        return Err(AudioError::Empty);
    }
    if let Some(bad) = samples.iter().position(|x| !x.is_finite()) {
        return Err(AudioError::Corrupt(format!("sample {bad} is not a finite number")));
    }
    Ok(Decoded { samples, sample_rate, channels })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit PCM wav of `frames` stereo frames at `rate`.
    fn wav(rate: u32, frames: usize) -> Vec<u8> {
        let data_len = (frames * 4) as u32;
        let mut b = Vec::new();
        b.extend(b"RIFF");
        b.extend((36 + data_len).to_le_bytes());
        b.extend(b"WAVEfmt ");
        b.extend(16u32.to_le_bytes());
        b.extend(1u16.to_le_bytes()); // PCM
        b.extend(2u16.to_le_bytes()); // stereo
        b.extend(rate.to_le_bytes());
        b.extend((rate * 4).to_le_bytes());
        b.extend(4u16.to_le_bytes());
        b.extend(16u16.to_le_bytes());
        b.extend(b"data");
        b.extend(data_len.to_le_bytes());
        for i in 0..frames {
            let l = ((i as f32 * 0.05).sin() * 8000.0) as i16;
            b.extend(l.to_le_bytes());
            b.extend((-l / 2).to_le_bytes());
        }
        b
    }

    #[test]
    fn decodes_a_stereo_wav_to_mono() {
        let d = decode(wav(22050, 2205), Some("wav"), 60).unwrap();
        assert_eq!((d.sample_rate, d.channels, d.samples.len()), (22050, 2, 2205));
        // (l - l/2) / 2 = l / 4.
        let l = ((7.0f32 * 0.05).sin() * 8000.0) as i16;
        let (left, right) = (l as f32, (-l / 2) as f32);
        let got = d.samples[7] * 32768.0;
        assert!((got - (left + right) / 2.0).abs() <= 0.01, "{got} vs the mean of {left} and {right}");
    }

    #[test]
    fn refuses_what_is_not_audio() {
        assert_eq!(decode(Vec::new(), None, 60).unwrap_err(), AudioError::Empty);
        assert!(matches!(decode(b"hello, this is text, not audio".to_vec(), None, 60), Err(AudioError::NotAudio(_))));
        // A header that promises data that is not there decodes to nothing.
        let mut cut = wav(16000, 100);
        cut.truncate(44);
        assert!(decode(cut, Some("wav"), 60).is_err());
        // Too long.
        assert_eq!(decode(wav(8000, 8000 * 3), None, 2).unwrap_err(), AudioError::TooLong { max_seconds: 2 });
    }
}
