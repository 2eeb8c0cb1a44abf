"""Write a synthetic Llama checkpoint of about 1 GB (f32, several shards) for
measuring peak memory while loading: `just inspect FOLDER --load --dtype bf16`
should need about the bf16 model's size, not the f32 file's.

    python scripts/make_synthetic_checkpoint.py /tmp/synthetic-1gb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 3,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def shapes() -> dict[str, tuple[int, ...]]:
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{name}.weight"] = (h, h)
        out[f"{p}.mlp.gate_proj.weight"] = (i, h)
        out[f"{p}.mlp.up_proj.weight"] = (i, h)
        out[f"{p}.mlp.down_proj.weight"] = (h, i)
        out[f"{p}.input_layernorm.weight"] = (h,)
        out[f"{p}.post_attention_layernorm.weight"] = (h,)
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = list(shapes().items())
    shards = [names[k::4] for k in range(4)]
    weight_map = {}
    for index, shard in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in shard}
        save_file(tensors, folder / file)
        weight_map.update({n: file for n, _ in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
