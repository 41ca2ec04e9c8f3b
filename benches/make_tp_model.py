"""A random-weight Llama of ~0.44B parameters in bfloat16, for the tensor-parallel benchmark
(benches/tp.sh). Not committed: written to the folder given (default /tmp/sluice-tp-llama).

Shape: hidden 1024, 24 layers, 16 heads of 64 (8 KV heads), MLP 4096, vocabulary 32000,
untied LM head. Weights N(0, 0.02), seed 0; the tokenizer is the tiny Llama fixture's (the
shapes, not the vocabulary, are what a step costs). Needs only torch (the project venv's):
the safetensors file is written by hand (8-byte header length, JSON header, raw tensors).
"""

import ctypes
import json
import os
import shutil
import struct
import sys

import torch

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sluice-tp-llama"
fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-llama")
H, L, HEADS, KV, D, MLP, V = 1024, 24, 16, 8, 64, 4096, 32000
torch.manual_seed(0)

shapes = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]}
for i in range(L):
    p = f"model.layers.{i}."
    shapes |= {
        p + "input_layernorm.weight": [H],
        p + "post_attention_layernorm.weight": [H],
        p + "self_attn.q_proj.weight": [HEADS * D, H],
        p + "self_attn.k_proj.weight": [KV * D, H],
        p + "self_attn.v_proj.weight": [KV * D, H],
        p + "self_attn.o_proj.weight": [H, HEADS * D],
        p + "mlp.gate_proj.weight": [MLP, H],
        p + "mlp.up_proj.weight": [MLP, H],
        p + "mlp.down_proj.weight": [H, MLP],
    }

os.makedirs(out, exist_ok=True)
header, blobs, offset = {}, [], 0
for name, shape in shapes.items():
    t = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape) * 0.02
    t = t.to(torch.bfloat16).contiguous()
    data = ctypes.string_at(t.data_ptr(), t.numel() * 2)
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for b in blobs:
        f.write(b)

config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "num_hidden_layers": L,
    "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": D, "intermediate_size": MLP,
    "vocab_size": V, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(fixtures, name), out)
params = sum(torch.Size(s).numel() for s in shapes.values())
print(f"{out}: {params / 1e9:.3f}B parameters, {offset / 1e9:.2f} GB of bfloat16")
