"""A random-weight GGUF of Llama-3-8B's shape in Q4_K_M's encodings, for measuring what
an 8B-class quantized file costs to load and to decode (BENCHMARKS.md). Not committed:
the file is ~4.6 GB.

    python benches/make_q4k_8b.py SMOLLM2.gguf OUT.gguf     # needs numpy and gguf

Shapes are Llama-3-8B's (32 layers, hidden 4096, MLP 14336, 32 query and 8 KV heads,
128,256-token vocabulary). Types follow llama.cpp's Q4_K_M: every matrix Q4_K, except the
output projection and, in the first and last eighth of the layers and every third layer
between, attn_v and ffn_down, which are Q6_K. Block bytes are random with scales chosen so
that weights have a standard deviation of a few hundredths, as trained ones do.

The tokenizer is SmolLM2's (copied from the GGUF given), its vocabulary padded with
tokens that no merge reaches up to 128,256: the shapes, not the vocabulary, are what
loading and decoding cost.
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFValueType, GGUFWriter

src_path, out_path = sys.argv[1], sys.argv[2]
LAYERS, HIDDEN, MLP, HEADS, KV_HEADS, VOCAB = 32, 4096, 14336, 32, 8, 128256
HEAD_DIM = HIDDEN // HEADS
rng = np.random.default_rng(0)


def f16_bytes(x):
    return np.frombuffer(np.float16(x).tobytes(), np.uint8)


def q4_k(rows, cols):
    """Q4_K: 256 values in 144 bytes: d, dmin (float16), 12 bytes of 6-bit scales and
    mins, 128 bytes of nibbles; a weight is d·scale·q − dmin·min."""
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    d = 2e-4
    blocks[:, :, 0:2] = f16_bytes(d)
    blocks[:, :, 2:4] = f16_bytes(d * 7.5)
    return blocks.reshape(rows, -1)


def q6_k(rows, cols):
    """Q6_K: 256 values in 210 bytes: 128 bytes of low nibbles, 64 of high bits, 16
    int8 scales, d (float16) last; a weight is d·scale·(q − 32)."""
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 210), dtype=np.uint8)
    blocks[:, :, 208:210] = f16_bytes(1.5e-5)
    return blocks.reshape(rows, -1)


def more_bits(i):
    """llama.cpp's use_more_bits: where Q4_K_M spends Q6_K on attn_v and ffn_down."""
    return i < LAYERS // 8 or i >= 7 * LAYERS // 8 or (i - LAYERS // 8) % 3 == 2


src = GGUFReader(src_path)
w = GGUFWriter(out_path, "llama")
w.add_name("random Llama-3-8B shape, Q4_K_M encodings")
w.add_context_length(8192)
w.add_embedding_length(HIDDEN)
w.add_block_count(LAYERS)
w.add_feed_forward_length(MLP)
w.add_head_count(HEADS)
w.add_head_count_kv(KV_HEADS)
w.add_rope_dimension_count(HEAD_DIM)
w.add_rope_freq_base(500000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_vocab_size(VOCAB)
w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def field(name):
    f = src.fields[name]
    if f.types[0] == GGUFValueType.ARRAY:
        return [f.parts[i] for i in f.data]
    return f.parts[f.data[0]]


tokens = [bytes(t).decode("utf-8") for t in field("tokenizer.ggml.tokens")]
types = [int(t[0]) for t in field("tokenizer.ggml.token_type")]
pad = VOCAB - len(tokens)
w.add_tokenizer_model(bytes(field("tokenizer.ggml.model")).decode())
w.add_tokenizer_pre(bytes(field("tokenizer.ggml.pre")).decode())
w.add_token_list(tokens + [f"<pad{i}>" for i in range(pad)])
w.add_token_types(types + [1] * pad)
w.add_token_merges([bytes(m).decode("utf-8") for m in field("tokenizer.ggml.merges")])
for key, add in [("tokenizer.ggml.bos_token_id", w.add_bos_token_id), ("tokenizer.ggml.eos_token_id", w.add_eos_token_id)]:
    if key in src.fields:
        add(int(field(key)[0]))
if "tokenizer.chat_template" in src.fields:
    w.add_chat_template(bytes(field("tokenizer.chat_template")).decode())


def matrix(name, rows, cols, ty):
    data = q6_k(rows, cols) if ty == T.Q6_K else q4_k(rows, cols)
    w.add_tensor(name, data, raw_dtype=ty)


def norm(name):
    w.add_tensor(name, np.ones(HIDDEN, dtype=np.float32))


matrix("token_embd.weight", VOCAB, HIDDEN, T.Q4_K)
for i in range(LAYERS):
    p = f"blk.{i}"
    norm(f"{p}.attn_norm.weight")
    matrix(f"{p}.attn_q.weight", HIDDEN, HIDDEN, T.Q4_K)
    matrix(f"{p}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN, T.Q4_K)
    matrix(f"{p}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN, T.Q6_K if more_bits(i) else T.Q4_K)
    matrix(f"{p}.attn_output.weight", HIDDEN, HIDDEN, T.Q4_K)
    norm(f"{p}.ffn_norm.weight")
    matrix(f"{p}.ffn_gate.weight", MLP, HIDDEN, T.Q4_K)
    matrix(f"{p}.ffn_up.weight", MLP, HIDDEN, T.Q4_K)
    matrix(f"{p}.ffn_down.weight", HIDDEN, MLP, T.Q6_K if more_bits(i) else T.Q4_K)
norm("output_norm.weight")
matrix("output.weight", VOCAB, HIDDEN, T.Q6_K)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file(progress=False)
w.close()
print(out_path)
