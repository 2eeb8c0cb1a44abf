"""Write the HF transformers reference data for the Mistral, Qwen2 and Falcon parity tests.

Builds small random-weight models whose configs mirror real checkpoints and
records what HF computes for them, in the format of make_parity_fixtures.py:

  tests/fixtures/parity/<family>/        config.json, model.safetensors (bf16),
                                         tokenizer.json, tokenizer_config.json
  tests/fixtures/parity/<family>/reference.safetensors
      {dtype}.p{i}.hidden   [layers + 1, tokens, hidden]  raw residual stream
      {dtype}.p{i}.logits   [vocab]                       last position
      p{i}.input_ids        [tokens]
      p0.mask.block{b}      [tokens, tokens] uint8        (windowed fixtures only)
                            the boolean mask HF passed to block b's attention
  tests/fixtures/parity/<family>/reference.json
      prompts, rendered chat templates, tokenizer cases

Families:
  mistral01       Mistral-7B-v0.1 / Instruct-v0.1: GQA 4:1, window 4096, theta 1e4
  mistral02       Mistral-7B-Instruct-v0.2: no window, theta 1e6
  mistral-window  Mistral with a 5-token window and prompts of 37 to 94 tokens
  qwen2           Qwen2.5-0.5B-Instruct: GQA 7:1, q/k/v biases, tied embeddings,
                  theta 1e6, eps 1e-6, and a disabled window (use_sliding_window: false)
  qwen2-untied    the same with a separate lm_head, saved in transformers 5's layout
  qwen2-window    Qwen2 with use_sliding_window: true, a 5-token window, and
                  max_window_layers 1, so blocks 1 and 2 are windowed
  falcon7b        falcon-7b: parallel attention and MLP, multi-query attention,
                  one LayerNorm per block, no biases, tied embeddings
  falcon-rw       the falcon-7b layout under the original "RefinedWebModel" keys
  falcon-newarch  falcon-40b's new_decoder_architecture: ln_attn/ln_mlp, 2 KV groups
  falcon-seq      Falcon with parallel_attn: false, multi-head attention and biases

The Mistral configs and the Qwen2 ones other than qwen2-untied are rewritten in
the hub's layout, with rope_theta and torch_dtype at the top level.

Run with the versions pinned in scripts/requirements-reference.txt:
    python scripts/make_family_fixtures.py
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from make_parity_fixtures import (
    DTYPES,
    OUT,
    PROMPTS,
    SEED,
    TOKENIZER_CASES,
    byte_level_tokenizer,
    chat_ids,
    make_tokenizers,
    write_legacy_files,
)

# The special tokens of Falcon's tokenizer, in its order: "<|endoftext|>" gets id 11.
FALCON_SPECIALS = [
    ">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<", ">>ANSWER<<",
    ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>",
]

# Falcon prompts follow FastChat's "falcon" layout, long enough to exercise attention.
FALCON_PROMPT = "User: {text}\n\nAssistant:"


@dataclass
class Fixture:
    """One fixture folder: the HF classes, config arguments and how config.json is written."""

    config_class: type
    model_class: type
    style: str
    arguments: dict
    # Rewrites config.json after the reference is recorded (the hub's layouts).
    rewrite: Callable[[Path], None] | None = None
    record_masks: bool = False


def hub_qwen2(window: int, enabled: bool, max_window_layers: int) -> Callable[[Path], None]:
    """Write config.json as Qwen2.5's hub files have it: no layer_types, explicit window keys.

    transformers 5 saves `sliding_window: null` and `layer_types` when the window
    is disabled. The hub's configs carry a window value with `use_sliding_window: false`.
    """

    def rewrite(folder: Path) -> None:
        write_legacy_files(folder)
        config = json.loads((folder / "config.json").read_text())
        config.pop("layer_types", None)
        config["use_sliding_window"] = enabled
        config["sliding_window"] = window
        config["max_window_layers"] = max_window_layers
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    return rewrite


def refinedweb_model(folder: Path) -> None:
    """Replace config.json by the original falcon-7b config's keys ("RefinedWebModel").

    That config has `n_head` and `n_layer`, no `tie_word_embeddings` (tied by
    default) and no rope keys (theta 10000), and names the remote-code class.
    """
    config = json.loads((folder / "config.json").read_text())
    original = {
        "alibi": False,
        "apply_residual_connection_post_layernorm": False,
        "architectures": ["RWForCausalLM"],
        "attention_dropout": 0.0,
        "bias": False,
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "hidden_dropout": 0.0,
        "hidden_size": config["hidden_size"],
        "initializer_range": 0.02,
        "layer_norm_epsilon": config["layer_norm_epsilon"],
        "model_type": "RefinedWebModel",
        "multi_query": True,
        "n_head": config["num_attention_heads"],
        "n_layer": config["num_hidden_layers"],
        "parallel_attn": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.27.4",
        "use_cache": True,
        "vocab_size": config["vocab_size"],
    }
    (folder / "config.json").write_text(json.dumps(original, indent=2) + "\n")


# Mistral-7B: hidden 4096, 32 heads, 8 KV heads, MLP 14336 (3.5 x hidden), eps 1e-5.
MISTRAL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=224,
               num_hidden_layers=3, rms_norm_eps=1e-5, max_position_embeddings=32768,
               tie_word_embeddings=False)
# Qwen2.5-0.5B-Instruct: hidden 896, 14 heads, 2 KV heads (head_dim 64), MLP 4864.
QWEN2 = dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, intermediate_size=304,
             num_hidden_layers=3, rms_norm_eps=1e-6, max_position_embeddings=32768,
             rope_theta=1000000.0)
# falcon-7b: hidden 4544, 71 heads of 64, multi-query, MLP 4 x hidden, eps 1e-5.
FALCON = dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=3, layer_norm_epsilon=1e-5,
              max_position_embeddings=2048, alibi=False, bias=False, multi_query=True,
              parallel_attn=True, new_decoder_architecture=False, tie_word_embeddings=True)

FIXTURES = {
    "mistral01": Fixture(MistralConfig, MistralForCausalLM, "llama2",
                         dict(MISTRAL, rope_theta=10000.0, sliding_window=4096), write_legacy_files),
    "mistral02": Fixture(MistralConfig, MistralForCausalLM, "llama2",
                         dict(MISTRAL, rope_theta=1000000.0, sliding_window=None), write_legacy_files),
    "mistral-window": Fixture(MistralConfig, MistralForCausalLM, "llama2",
                              dict(MISTRAL, rope_theta=10000.0, sliding_window=5), write_legacy_files,
                              record_masks=True),
    # A disabled 4-token window, which would change the states if it were applied.
    "qwen2": Fixture(Qwen2Config, Qwen2ForCausalLM, "chatml",
                     dict(QWEN2, tie_word_embeddings=True, use_sliding_window=False),
                     hub_qwen2(window=4, enabled=False, max_window_layers=1)),
    "qwen2-untied": Fixture(Qwen2Config, Qwen2ForCausalLM, "chatml",
                            dict(QWEN2, tie_word_embeddings=False, use_sliding_window=False)),
    "qwen2-window": Fixture(Qwen2Config, Qwen2ForCausalLM, "chatml",
                            dict(QWEN2, tie_word_embeddings=True, use_sliding_window=True,
                                 sliding_window=5, max_window_layers=1),
                            hub_qwen2(window=5, enabled=True, max_window_layers=1), record_masks=True),
    "falcon7b": Fixture(FalconConfig, FalconForCausalLM, "falcon", dict(FALCON)),
    "falcon-rw": Fixture(FalconConfig, FalconForCausalLM, "falcon", dict(FALCON), refinedweb_model),
    # falcon-40b: 128 heads in 8 KV groups, two LayerNorms per block.
    "falcon-newarch": Fixture(FalconConfig, FalconForCausalLM, "falcon",
                              dict(FALCON, new_decoder_architecture=True, num_kv_heads=2)),
    "falcon-seq": Fixture(FalconConfig, FalconForCausalLM, "falcon",
                          dict(FALCON, num_hidden_layers=2, multi_query=False, parallel_attn=False,
                               bias=True)),
}


def tokenizer_styles() -> dict[str, tuple[Tokenizer, dict]]:
    """Return the tokenizers of make_parity_fixtures.py plus a Falcon-style one."""
    styles = make_tokenizers()
    styles["falcon"] = (
        byte_level_tokenizer(FALCON_SPECIALS, None, None, 400),
        {"eos_token": "<|endoftext|>"},
    )
    return styles


def randomize(model: torch.nn.Module) -> None:
    """Give every weight random values that bf16 stores exactly.

    Norm weights scatter around 1 and their biases around 0, embeddings are
    large enough to matter, and projections keep the activations near unit scale.
    """
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name
            if is_norm and name.endswith("weight"):
                values = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
            elif is_norm or name.endswith("bias"):
                values = 0.2 * torch.randn(param.shape, generator=generator)
            elif "embed" in name or "word_embeddings" in name:
                values = 0.5 * torch.randn(param.shape, generator=generator)
            else:
                values = torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5
            param.copy_(values.to(torch.bfloat16).to(torch.float32))


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    if hasattr(model, "transformer"):
        return model.transformer.ln_f
    return model.model.norm


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    if hasattr(model, "transformer"):
        return model.transformer.h
    return model.model.layers


def record_states(model, input_ids: list[int], masks: dict | None):
    """Return the raw residual stream at every index and the last position's logits.

    With `masks`, also store the attention mask each block received.
    """
    captured = {}
    handles = [final_norm(model).register_forward_pre_hook(
        lambda _module, args: captured.__setitem__("last", args[0].detach()))]
    if masks is not None:
        for index, block in enumerate(blocks(model)):
            def keep_mask(_module, _args, kwargs, index=index):
                captured[f"mask{index}"] = kwargs["attention_mask"]
            handles.append(block.register_forward_pre_hook(keep_mask, with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(torch.tensor([input_ids]), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()

    if masks is not None:
        length = len(input_ids)
        for index in range(len(blocks(model))):
            mask = captured[f"mask{index}"]
            if mask is None:
                # HF skips the mask of an unpadded full-attention block and runs
                # SDPA with is_causal=True, which is the lower triangle.
                mask = torch.ones(1, 1, length, length, dtype=torch.bool).tril()
            masks[f"block{index}"] = mask[0, 0].to(torch.uint8).contiguous()
    states = list(out.hidden_states[:-1]) + [captured["last"]]
    hidden = torch.stack([s[0] for s in states])
    return hidden, out.logits[0, -1].to(torch.float32)


def render_prompts(hf_tokenizer, style: str) -> list[dict]:
    prompts = []
    for index, text in enumerate(PROMPTS):
        with_system = index % 2 == 0
        if hf_tokenizer.chat_template is not None:
            messages = chat_ids(hf_tokenizer, text, with_system)
            rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            input_ids = hf_tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            rendered = FALCON_PROMPT.format(text=text) if style == "falcon" else text
            input_ids = hf_tokenizer(rendered)["input_ids"]
        prompts.append({"text": text, "system": with_system, "rendered": rendered, "input_ids": input_ids})
    return prompts


def build_fixture(name: str, fixture: Fixture, styles) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    tokenizer, tokenizer_config = styles[fixture.style]
    tokenizer.save(str(folder / "tokenizer.json"))
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **tokenizer_config)
    hf_tokenizer.save_pretrained(folder)

    eos = tokenizer.token_to_id(tokenizer_config["eos_token"])
    bos_name = tokenizer_config.get("bos_token")
    bos = tokenizer.token_to_id(bos_name) if bos_name else eos
    config = fixture.config_class(vocab_size=tokenizer.get_vocab_size(), bos_token_id=bos,
                                  eos_token_id=eos, **fixture.arguments)
    torch.manual_seed(SEED)
    model = fixture.model_class(config).eval()
    randomize(model)
    model.to(torch.bfloat16).save_pretrained(folder)

    prompts = render_prompts(hf_tokenizer, fixture.style)
    reference: dict[str, torch.Tensor] = {}
    for index, prompt in enumerate(prompts):
        reference[f"p{index}.input_ids"] = torch.tensor(prompt["input_ids"], dtype=torch.int64)

    for dtype_name, dtype in DTYPES.items():
        typed = fixture.model_class.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
        for index, prompt in enumerate(prompts):
            masks = {} if fixture.record_masks and index == 0 and dtype_name == "f32" else None
            hidden, logits = record_states(typed, prompt["input_ids"], masks)
            # Half-precision runs are stored in their own dtype: it is exact and half the size.
            reference[f"{dtype_name}.p{index}.hidden"] = hidden.to(dtype).contiguous()
            reference[f"{dtype_name}.p{index}.logits"] = logits.contiguous()
            for block, mask in (masks or {}).items():
                reference[f"p0.mask.{block}"] = mask
    save_file(reference, folder / "reference.safetensors")
    if fixture.rewrite is not None:
        fixture.rewrite(folder)

    templates = []
    if hf_tokenizer.chat_template is not None:
        for text in PROMPTS:
            for with_system in (False, True):
                for generation in (False, True):
                    messages = chat_ids(hf_tokenizer, text, with_system)
                    templates.append({
                        "messages": messages,
                        "add_generation_prompt": generation,
                        "rendered": hf_tokenizer.apply_chat_template(
                            messages, tokenize=False, add_generation_prompt=generation),
                    })
    specials = " ".join(t for t in tokenizer_config.values() if t.startswith("<") and len(t) < 30)
    cases = TOKENIZER_CASES + [f"{specials} text between {specials}"]
    tokenizer_cases = [
        {
            "text": text,
            "with_special": hf_tokenizer(text)["input_ids"],
            "without_special": hf_tokenizer(text, add_special_tokens=False)["input_ids"],
        }
        for text in cases
    ]
    (folder / "reference.json").write_text(json.dumps({
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompts": prompts,
        "templates": templates,
        "tokenizer_cases": tokenizer_cases,
    }, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    styles = tokenizer_styles()
    for name, fixture in FIXTURES.items():
        build_fixture(name, fixture, styles)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
