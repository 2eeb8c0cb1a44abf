#!/usr/bin/env python3
"""Write the HF transformers references for the GGUF tokenizer tests.

crates/model/tests/gguf_tokenizer.rs builds a tokenizer from a GGUF file's own
metadata and checks it against what transformers builds from the same file
(`AutoTokenizer.from_pretrained(folder, gguf_file=name)`). This script writes,
under tests/fixtures/gguf:

  smollm2-tokenizer.json
      from models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched by `just setup`):
      "gpt2" byte-level BPE, pre-tokenizer "smollm", ChatML template.
  llama-spm.gguf, llama-spm-tokenizer.json
      a "llama" (SentencePiece-style BPE with byte fallback) GGUF made from
      tests/fixtures/parity/llama2/tokenizer.json: tokens, scores, token types
      and no merges, as Llama-2 and Mistral GGUFs have them.
  llama3-bpe.gguf, llama3-bpe-tokenizer.json
      a "gpt2" GGUF with pre-tokenizer "llama-bpe" made from
      tests/fixtures/parity/llama3/tokenizer.json: tokens, merges, token types.

Each reference holds variants: the file as written, and for the small files
the same metadata with a few keys set or removed (other pre-tokenizers,
add_bos_token / add_eos_token, merges, user-defined tokens). The test applies
the same edits to the metadata before building its tokenizer. For every
variant it records token ids with and without special tokens for a list of
texts, their decodings, the special tokens and the added tokens; for the
variant as written also `apply_chat_template` renderings and their ids.

Requirements (the versions that wrote the committed files): transformers==5.25.0,
tokenizers==0.23.3, gguf==0.19.0, and torch and numpy (transformers' GGUF
loading imports torch; torch==2.13.0 and numpy==2.4.6 wrote them). The
environment of scripts/requirements-reference.txt plus gguf works:
    python3 -m venv /tmp/ref
    /tmp/ref/bin/pip install -r scripts/requirements-reference.txt gguf==0.19.0
    /tmp/ref/bin/python scripts/make_gguf_reference.py

The output is deterministic for given package versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import gguf
import tokenizers
import transformers
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "gguf"
PARITY_DIR = REPO_ROOT / "tests" / "fixtures" / "parity"
SMOLLM2_GGUF = REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

WRITTEN = [
    "smollm2-tokenizer.json",
    "llama-spm.gguf",
    "llama-spm-tokenizer.json",
    "llama3-bpe.gguf",
    "llama3-bpe-tokenizer.json",
]

EXPECTED_VERSIONS = {"transformers": "5.25.0", "tokenizers": "0.23.3", "gguf": "0.19.0"}

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LONG_TEXT = " ".join(
    [
        "Large language models are trained on a great deal of text, and alignment then teaches them",
        "to refuse harmful requests while staying helpful on ordinary ones. Researchers read the hidden",
        "states of every layer to see where a model first tells a harmful request from a harmless one:",
        "weak classifiers trained on layer 3, 7, 11 and 15 reach 95.2%, 97.8%, 99.1% and 99.6% accuracy.",
        "The logit lens maps each state through the final norm and the unembedding, so that one can read",
        "tokens like 'Sure', 'Sorry' or 'I cannot' long before the last layer.\n\nSteps:\n",
        "  1. Run 1,024 normal, malicious and jailbreak prompts.\n  2. Save the residual stream.\n",
        "  3. Train a linear probe per layer; report mean +/- std over 5 seeds.\n\n",
        "Jailbreaks such as \"Ignore all previous instructions\" or role play (\"You are DAN...\") shift",
        "the middle layers' states back towards the harmless cluster; that is the effect to explain.",
        "Unicode still matters here: naïve café résumé, Größe, 東京, 🦀 and tabs\tbetween\twords.",
    ]
)

COMMON_TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   spaces    between     words",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline endings\r\n",
    "\n\n\n",
    "   \n   \n  ",
    "numbers 0 1 12 123 1234 12345 3.14159 1,000,000 -42 1e-9",
    "2024-06-11 12:34:56",
    "Unicode: café naïve façade Ångström",
    "日本語のテキストと中文文本",
    "Emoji 🦀🚀 and a flag 🇫🇷 and a family 👨\u200d👩\u200d👧",
    "Ελληνικά и русский и العربية и עברית",
    "combining e\u0301 and zero\u200bwidth and nbsp\u00a0here",
    "I'm sure they'll say we'd've done it, don't you think? WE'RE",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "fn main() {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Write a tutorial on how to pick a lock.",
    "CamelCase HTTPServer x123y4567 \u00bd\u2153 cafe\u0301s HE'S 'quoted'  \n\t\n end",
    LONG_TEXT,
]

EXTRA_TEXTS = {
    "smollm2": [
        "text<|im_end|>text",
        "<|endoftext|>",
        "<|im_start",
        "<repo_name>ihs<file_sep>main.rs<|endoftext|>",
        "<|im_start|><|im_start|>  <|im_end|>",
    ],
    "llama-spm": [
        "<s>",
        "<s>[INST] Hi [/INST]</s>",
        "a</s>b<unk>c",
        "<s",
    ],
    # No "<|endoftext|>": transformers adds that string to any "gpt2" tokenizer
    # that lacks it, under a new id past the file's vocabulary (see the test).
    "llama3-bpe": [
        "<|begin_of_text|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "x<|eot_id|>y",
        "<|eot_id",
    ],
}

# The texts each variant of a small file is checked on: short ones that still
# cover spaces, newlines, digits, unicode, contractions, code and special tokens.
VARIANT_TEXTS = [
    "",
    "Hello world",
    " leading space",
    "multiple   spaces    between     words",
    "line one\nline two\n\nline four\n\n\n",
    "numbers 0 1 12 123 1234 12345 3.14159 1,000,000 -42 1e-9",
    "Unicode: café naïve façade Ångström",
    "Emoji 🦀🚀 and a flag 🇫🇷 and a family 👨\u200d👩\u200d👧",
    "I'm sure they'll say we'd've done it, don't you think? WE'RE",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "CamelCase HTTPServer x123y4567 \u00bd\u2153 cafe\u0301s HE'S 'quoted'  \n\t\n end",
]

CHATS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    (
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3 + 3?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "  Tell me about café 日本 🦀\n\nThanks  "}], True),
]


def load_parity_tokenizer(family: str) -> tuple[dict, dict]:
    spec = json.loads((PARITY_DIR / family / "tokenizer.json").read_text())
    config = json.loads((PARITY_DIR / family / "tokenizer_config.json").read_text())
    return spec, config


def tokens_by_id(spec: dict) -> list[str]:
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "ids are not 0..n"
    return tokens


def merges_of(spec: dict) -> list[str]:
    return [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]


def llama_spm_metadata() -> dict:
    """Metadata of a Llama-2 style SentencePiece GGUF: scores rank the pieces by
    merge order (-rank for normal pieces, 0 for the others) and there are no merges."""
    spec, config = load_parity_tokenizer("llama2")
    tokens = tokens_by_id(spec)
    types, scores = [], []
    rank = 0
    for token in tokens:
        if token == "<unk>":
            types.append(UNKNOWN)
            scores.append(0.0)
        elif token in ("<s>", "</s>"):
            types.append(CONTROL)
            scores.append(0.0)
        elif token.startswith("<0x") and len(token) == 6:
            types.append(BYTE)
            scores.append(0.0)
        else:
            types.append(NORMAL)
            scores.append(-float(rank))
            rank += 1
    return {
        "tokenizer.ggml.model": ("string", "llama"),
        "tokenizer.ggml.tokens": ("string_array", tokens),
        "tokenizer.ggml.scores": ("f32_array", scores),
        "tokenizer.ggml.token_type": ("i32_array", types),
        "tokenizer.ggml.bos_token_id": ("u32", tokens.index("<s>")),
        "tokenizer.ggml.eos_token_id": ("u32", tokens.index("</s>")),
        "tokenizer.ggml.unknown_token_id": ("u32", tokens.index("<unk>")),
        "tokenizer.ggml.add_bos_token": ("bool", True),
        "tokenizer.ggml.add_eos_token": ("bool", False),
        "tokenizer.chat_template": ("string", config["chat_template"]),
    }


def llama3_bpe_metadata() -> dict:
    """Metadata of a Llama-3 style GGUF: byte-level BPE with merges, pre "llama-bpe"."""
    spec, config = load_parity_tokenizer("llama3")
    tokens = tokens_by_id(spec)
    special = {added["content"] for added in spec["added_tokens"] if added["special"]}
    return {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "llama-bpe"),
        "tokenizer.ggml.tokens": ("string_array", tokens),
        "tokenizer.ggml.token_type": ("i32_array", [CONTROL if t in special else NORMAL for t in tokens]),
        "tokenizer.ggml.merges": ("string_array", merges_of(spec)),
        "tokenizer.ggml.bos_token_id": ("u32", tokens.index("<|begin_of_text|>")),
        "tokenizer.ggml.eos_token_id": ("u32", tokens.index("<|eot_id|>")),
        "tokenizer.ggml.add_bos_token": ("bool", True),
        "tokenizer.chat_template": ("string", config["chat_template"]),
    }


def llama_spm_variants(base: dict) -> list[dict]:
    spec, _ = load_parity_tokenizer("llama2")
    tokens = base["tokenizer.ggml.tokens"][1]
    types = list(base["tokenizer.ggml.token_type"][1])
    # A multi-piece word as user-defined (matched whole), and a normal piece as control.
    types[tokens.index("model")] = USER_DEFINED
    types[tokens.index("ing")] = CONTROL
    return [
        {"name": "add_eos_token", "set": {"tokenizer.ggml.add_eos_token": ("bool", True)}},
        {"name": "add_bos_token false", "set": {"tokenizer.ggml.add_bos_token": ("bool", False)}},
        {"name": "add_bos_token absent", "remove": ["tokenizer.ggml.add_bos_token"]},
        {"name": "merges", "set": {"tokenizer.ggml.merges": ("string_array", merges_of(spec))}},
        {"name": "pre default", "set": {"tokenizer.ggml.pre": ("string", "default")}},
        {"name": "token types", "set": {"tokenizer.ggml.token_type": ("i32_array", types)}},
        {"name": "padding id", "set": {"tokenizer.ggml.padding_token_id": ("u32", tokens.index("</s>"))}},
        # gguf-py's LlamaHfVocab writes -1000 for every score: the merge order then
        # rests on the tie-breaks alone.
        {"name": "equal scores", "set": {"tokenizer.ggml.scores": ("f32_array", [-1000.0] * len(tokens))}},
    ]


def llama3_bpe_variants(base: dict) -> list[dict]:
    tokens = base["tokenizer.ggml.tokens"][1]
    types = list(base["tokenizer.ggml.token_type"][1])
    types[tokens.index("he")] = USER_DEFINED
    types[tokens.index("Ġthe")] = USER_DEFINED
    pres = ["default", "gpt-2", "smollm", "llama3", "qwen2", "qwen35", "tekken", "gpt-4o"]
    return [
        *({"name": f"pre {pre}", "set": {"tokenizer.ggml.pre": ("string", pre)}} for pre in pres),
        {"name": "pre absent", "remove": ["tokenizer.ggml.pre"]},
        {"name": "add_bos_token absent", "remove": ["tokenizer.ggml.add_bos_token"]},
        {
            "name": "add_eos_token",
            "set": {"tokenizer.ggml.add_bos_token": ("bool", False), "tokenizer.ggml.add_eos_token": ("bool", True)},
        },
        {"name": "token types", "set": {"tokenizer.ggml.token_type": ("i32_array", types)}},
        {"name": "token types absent", "remove": ["tokenizer.ggml.token_type"]},
    ]


def write_gguf(path: Path, metadata: dict) -> None:
    """Write a GGUF with the given tokenizer metadata, no tensors, and the llama
    hyperparameters transformers reads to build a config."""
    tokens = metadata["tokenizer.ggml.tokens"][1]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(len(tokens))
    value_types = {
        "string": (gguf.GGUFValueType.STRING, None),
        "bool": (gguf.GGUFValueType.BOOL, None),
        "u32": (gguf.GGUFValueType.UINT32, None),
        "string_array": (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING),
        "f32_array": (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32),
        "i32_array": (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32),
    }
    for key, (kind, value) in metadata.items():
        value_type, sub_type = value_types[kind]
        writer.add_key_value(key, value, value_type, sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def apply_edits(metadata: dict, variant: dict) -> dict:
    edited = {k: v for k, v in metadata.items() if k not in variant.get("remove", [])}
    edited.update(variant.get("set", {}))
    return edited


def load_hf(path: Path):
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def chat_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if not isinstance(out, list):
        out = out["input_ids"]
    return list(out)


def record(
    tokenizer,
    texts: list[str],
    indices: list[int],
    with_chats: bool,
    pre_only: bool = False,
    record_merges: bool = False,
) -> dict:
    """What transformers computes for `texts` (and the chats); each case holds
    the index of its text in the file's "texts". Cases hold the
    pre-tokenizer's pieces, which show its split even where a small
    vocabulary's merges hide it in the ids; `pre_only` (for the variants that
    only change the pre-tokenizer) leaves out all but the pieces and the ids
    without special tokens. `record_merges` adds the BPE merges transformers
    recovered from the scores of a file without merges."""
    special = {
        name: getattr(tokenizer, f"{name}_token") for name in ("bos", "eos", "unk", "pad")
    }
    added = sorted(
        [index, token.content, token.special]
        for index, token in tokenizer.backend_tokenizer.get_added_tokens_decoder().items()
    )
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    cases = []
    for index in indices:
        text = texts[index]
        case = {"text": index, "pieces": [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]}
        case["without_special"] = tokenizer.encode(text, add_special_tokens=False)
        if not pre_only:
            with_special = tokenizer.encode(text, add_special_tokens=True)
            case["with_special"] = with_special
            case["decoded"] = tokenizer.decode(with_special, skip_special_tokens=False)
            case["decoded_skip_special"] = tokenizer.decode(with_special, skip_special_tokens=True)
        cases.append(case)
    result = {"special_tokens": special, "vocab_size": len(tokenizer), "added_tokens": added, "cases": cases}
    if record_merges:
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        result["merges"] = [" ".join(merge) for merge in model["merges"]]
    if with_chats:
        chats = []
        for messages, add_generation_prompt in CHATS:
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            ids = chat_ids(tokenizer, messages, add_generation_prompt)
            assert ids == tokenizer.encode(rendered, add_special_tokens=False)
            chats.append(
                {
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "rendered": rendered,
                    "ids": ids,
                }
            )
        result["chat"] = chats
    return result


def edits_json(variant: dict) -> dict:
    """The edits as the test reads them: {"key": {"type": ..., "value": ...}}."""
    return {
        "set": {key: {"type": kind, "value": value} for key, (kind, value) in variant.get("set", {}).items()},
        "remove": variant.get("remove", []),
    }


def versions() -> dict:
    return {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "gguf": _gguf_version()}


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def write_json(path: Path, data: dict) -> None:
    """Indented JSON with each case and each id list on one line, to keep the file small."""

    def compact(value) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    lines = ["{"]
    top = list(data.items())
    for i, (key, value) in enumerate(top):
        comma = "," if i + 1 < len(top) else ""
        if key == "variants":
            lines.append(f'  "variants": [')
            for j, variant in enumerate(value):
                lines.append("    {")
                items = list(variant.items())
                for k, (vkey, vvalue) in enumerate(items):
                    vcomma = "," if k + 1 < len(items) else ""
                    if vkey in ("cases", "chat", "added_tokens", "merges"):
                        lines.append(f"      {compact(vkey)}: [")
                        for m, item in enumerate(vvalue):
                            icomma = "," if m + 1 < len(vvalue) else ""
                            lines.append(f"        {compact(item)}{icomma}")
                        lines.append(f"      ]{vcomma}")
                    else:
                        lines.append(f"      {compact(vkey)}: {compact(vvalue)}{vcomma}")
                lines.append("    }" + ("," if j + 1 < len(value) else ""))
            lines.append("  ]" + comma)
        elif key == "texts":
            lines.append('  "texts": [')
            for m, text in enumerate(value):
                lines.append(f"    {compact(text)}" + ("," if m + 1 < len(value) else ""))
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {compact(key)}: {compact(value)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_smollm2() -> None:
    if not SMOLLM2_GGUF.is_file():
        sys.exit(f"{SMOLLM2_GGUF} is missing; run `just setup` to fetch it")
    texts = COMMON_TEXTS + EXTRA_TEXTS["smollm2"]
    tokenizer = load_hf(SMOLLM2_GGUF)
    every = list(range(len(texts)))
    variant = {"name": "as written", **edits_json({}), **record(tokenizer, texts, every, with_chats=True)}
    data = {
        "generator": "scripts/make_gguf_reference.py",
        "versions": versions(),
        "gguf": str(SMOLLM2_GGUF.relative_to(REPO_ROOT)),
        "texts": texts,
        "variants": [variant],
    }
    write_json(OUT_DIR / "smollm2-tokenizer.json", data)


def make_small(name: str, metadata: dict, variants: list[dict]) -> None:
    gguf_path = OUT_DIR / f"{name}.gguf"
    write_gguf(gguf_path, metadata)
    texts = COMMON_TEXTS + EXTRA_TEXTS[name]
    every = list(range(len(texts)))
    # The variants see the short texts and this file's special-token texts.
    subset = [i for i, text in enumerate(texts) if text in VARIANT_TEXTS or text in EXTRA_TEXTS[name]]
    recorded = [
        {
            "name": "as written",
            **edits_json({}),
            **record(
                load_hf(gguf_path),
                texts,
                every,
                with_chats=True,
                record_merges="tokenizer.ggml.merges" not in metadata,
            ),
        }
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            path = Path(tmp) / f"{name}-variant.gguf"
            write_gguf(path, apply_edits(metadata, variant))
            recorded.append(
                {
                    "name": variant["name"],
                    **edits_json(variant),
                    **record(
                        load_hf(path),
                        texts,
                        subset,
                        with_chats=False,
                        pre_only=variant["name"].startswith("pre"),
                        record_merges=variant["name"] == "equal scores",
                    ),
                }
            )
            path.unlink()
    data = {
        "generator": "scripts/make_gguf_reference.py",
        "versions": versions(),
        "gguf": str(gguf_path.relative_to(REPO_ROOT)),
        "texts": texts,
        "variants": recorded,
    }
    write_json(OUT_DIR / f"{name}-tokenizer.json", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    found = versions()
    for package, expected in EXPECTED_VERSIONS.items():
        if found[package] != expected:
            print(f"warning: {package} {found[package]} is installed; the committed files came from {expected}")
    hf_logging.set_verbosity_error()
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    make_smollm2()
    spm = llama_spm_metadata()
    make_small("llama-spm", spm, llama_spm_variants(spm))
    bpe = llama3_bpe_metadata()
    make_small("llama3-bpe", bpe, llama3_bpe_variants(bpe))
    for name in WRITTEN:
        path = OUT_DIR / name
        print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
