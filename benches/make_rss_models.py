"""Random-weight models of real small shapes, for measuring peak memory while loading
(benches/load_rss.sh). Not committed: written to the folder given (default /tmp/sluice-rss).

  qwen2.5-0.5b-bf16   Qwen2.5-0.5B's config, bfloat16 safetensors (~0.99 GB), as its
                      checkpoint ships: served in bfloat16, no conversion
  xlmr-base-f32       xlm-roberta-base's config (XLMRobertaModel), float32 safetensors
                      (~1.1 GB): served in bfloat16, every tensor converted

Both get a small tokenizer.json (the tiny fixtures'): the shapes, not the vocabularies, are
what loading costs. Run with the oracle venv's python.
"""

import os
import shutil
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, XLMRobertaConfig, XLMRobertaModel

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sluice-rss"
fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
torch.manual_seed(0)

qwen = os.path.join(out, "qwen2.5-0.5b-bf16")
cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                  use_sliding_window=False, sliding_window=None, bos_token_id=151643, eos_token_id=151645)
cfg.architectures = ["Qwen2ForCausalLM"]
with torch.device("cpu"):
    m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(qwen, safe_serialization=True)
del m
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(fixtures, "tiny-qwen2", f), qwen)

xlmr = os.path.join(out, "xlmr-base-f32")
cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
cfg.architectures = ["XLMRobertaModel"]
m = XLMRobertaModel(cfg)
m.save_pretrained(xlmr, safe_serialization=True)
del m
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(fixtures, "tiny-xlmr-embed", f), xlmr)
for d in (qwen, xlmr):
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
    print(f"{d}: {size / 1e6:.0f} MB of safetensors")
