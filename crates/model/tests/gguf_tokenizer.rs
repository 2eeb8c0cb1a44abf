//! Tokenizers built from GGUF metadata against HF transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=name)` for the same files.
//!
//! The references under tests/fixtures/gguf were recorded by
//! `scripts/make_gguf_reference.py`: token ids with and without special
//! tokens, decodings, pre-tokenizer pieces, special and added tokens, and
//! `apply_chat_template` renderings with their ids, for
//!
//! - the real `SmolLM2-135M-Instruct` GGUF (`gpt2`, pre `smollm`), fetched into
//!   models/ by `just setup`;
//! - `llama-spm.gguf`, a `llama` (`SentencePiece` BPE with byte fallback and
//!   scores, no merges) vocabulary;
//! - `llama3-bpe.gguf`, a `gpt2` vocabulary with pre `llama-bpe`;
//!
//! each as written and, for the small files, with a few metadata keys set or
//! removed (other pre-tokenizers, BOS/EOS flags, merges, token types).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ihs_gguf::{GgufFile, MetadataArray, MetadataValue};
use ihs_model::chat::{render_jinja, Message};
use ihs_model::gguf_tokenizer::{tokenizer_from_metadata, PRE_TOKENIZERS};
use ihs_model::{tokenizer_from_gguf, ModelError, PromptFormat, TemplateChoice, TextTokenizer};
use serde_json::Value;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/gguf").join(name)
}

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn open_gguf(path: &Path) -> GgufFile {
    assert!(
        path.is_file(),
        "{} is missing; run `just setup` to fetch the embedded model",
        path.display()
    );
    GgufFile::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn load_reference(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the reference is JSON")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("an id")).expect("a u32 id"))
        .collect()
}

/// Applies a variant's `set` and `remove` edits to the metadata.
fn apply_edits(metadata: &mut BTreeMap<String, MetadataValue>, variant: &Value) {
    for key in variant["remove"].as_array().unwrap() {
        metadata.remove(key.as_str().unwrap());
    }
    for (key, edit) in variant["set"].as_object().unwrap() {
        let value = &edit["value"];
        let strings = || {
            value
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let parsed = match edit["type"].as_str().unwrap() {
            "string" => MetadataValue::String(value.as_str().unwrap().to_owned()),
            "bool" => MetadataValue::Bool(value.as_bool().unwrap()),
            "u32" => MetadataValue::U32(value.as_u64().unwrap() as u32),
            "string_array" => MetadataValue::Array(MetadataArray::String(strings())),
            "i32_array" => MetadataValue::Array(MetadataArray::I32(
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as i32)
                    .collect(),
            )),
            "f32_array" => MetadataValue::Array(MetadataArray::F32(
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect(),
            )),
            other => panic!("unknown edit type {other}"),
        };
        metadata.insert(key.clone(), parsed);
    }
}

/// The pieces the pre-tokenizer splits `text` into, as `pre_tokenize_str` gives them.
fn pieces(tokenizer: &TextTokenizer, text: &str) -> Vec<String> {
    let pre_tokenizer = tokenizer
        .inner()
        .get_pre_tokenizer()
        .expect("a pre-tokenizer");
    let mut pretokenized = PreTokenizedString::from(text);
    pre_tokenizer.pre_tokenize(&mut pretokenized).unwrap();
    pretokenized
        .get_splits(OffsetReferential::Original, OffsetType::Char)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect()
}

/// Checks one recorded variant; returns the number of checked cases.
fn check_variant(
    label: &str,
    tokenizer: &TextTokenizer,
    n_tokens: usize,
    reference: &Value,
    variant: &Value,
) -> usize {
    let texts = reference["texts"].as_array().unwrap();
    let name = variant["name"].as_str().unwrap();

    let special = tokenizer.special_tokens();
    let expected = &variant["special_tokens"];
    for (field, ours) in [
        ("bos", &special.bos),
        ("eos", &special.eos),
        ("unk", &special.unk),
        ("pad", &special.pad),
    ] {
        assert_eq!(
            ours.as_deref(),
            expected[field].as_str(),
            "{label} [{name}]: {field} token"
        );
    }

    // transformers adds its class's default special tokens under new ids past
    // the vocabulary when the file lacks them; this tokenizer leaves them out.
    let mut hf_added = Vec::new();
    let mut hf_past_end = Vec::new();
    for entry in variant["added_tokens"].as_array().unwrap() {
        let id = entry[0].as_u64().unwrap() as u32;
        let content = entry[1].as_str().unwrap().to_owned();
        let is_special = entry[2].as_bool().unwrap();
        if (id as usize) < n_tokens {
            hf_added.push((id, content, is_special));
        } else {
            hf_past_end.push(content);
        }
    }
    for content in &hf_past_end {
        assert!(
            ["<|endoftext|>", "<s>", "</s>", "<unk>"].contains(&content.as_str()),
            "{label} [{name}]: transformers added {content:?} past the vocabulary"
        );
    }
    let mut ours: Vec<(u32, String, bool)> = tokenizer
        .inner()
        .get_added_tokens_decoder()
        .iter()
        .map(|(&id, token)| (id, token.content.clone(), token.special))
        .collect();
    ours.sort();
    assert_eq!(ours, hf_added, "{label} [{name}]: added tokens");
    assert_eq!(
        tokenizer.vocab_size() + hf_past_end.len(),
        variant["vocab_size"].as_u64().unwrap() as usize,
        "{label} [{name}]: vocabulary size"
    );
    assert!(tokenizer.vocab_size() <= n_tokens);

    if let Some(merges) = variant.get("merges") {
        // The merges recovered from the scores, in transformers' order.
        let serialized: Value =
            serde_json::from_str(&tokenizer.inner().to_string(false).unwrap()).unwrap();
        let ours: Vec<String> = serialized["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )
            })
            .collect();
        let expected: Vec<&str> = merges
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(ours, expected, "{label} [{name}]: recovered merges");
    }

    let mut checked = 0;
    for case in variant["cases"].as_array().unwrap() {
        let text = texts[case["text"].as_u64().unwrap() as usize]
            .as_str()
            .unwrap();
        let what = format!("{label} [{name}] {text:?}");
        assert_eq!(
            pieces(tokenizer, text),
            case["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
            "{what}: pre-tokenizer pieces"
        );
        assert_eq!(
            tokenizer.encode(text, false).unwrap(),
            ids(&case["without_special"]),
            "{what}: ids without special tokens"
        );
        if let Some(with_special) = case.get("with_special") {
            let with_special = ids(with_special);
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                with_special,
                "{what}: ids with special tokens"
            );
            assert_eq!(
                tokenizer.decode(&with_special, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{what}: decoded"
            );
            assert_eq!(
                tokenizer.decode(&with_special, true).unwrap(),
                case["decoded_skip_special"].as_str().unwrap(),
                "{what}: decoded without special tokens"
            );
        }
        assert!(
            tokenizer
                .encode(text, true)
                .unwrap()
                .iter()
                .all(|&id| (id as usize) < n_tokens),
            "{what}: an id past the vocabulary"
        );
        checked += 1;
    }

    if let Some(chats) = variant.get("chat") {
        let template = tokenizer.chat_template().expect("a chat template");
        for chat in chats.as_array().unwrap() {
            let messages: Vec<Message> = chat["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let add_generation_prompt = chat["add_generation_prompt"].as_bool().unwrap();
            let rendered = render_jinja(template, &messages, add_generation_prompt, special)
                .unwrap_or_else(|e| panic!("{label}: rendering {messages:?}: {e}"));
            assert_eq!(
                rendered,
                chat["rendered"].as_str().unwrap(),
                "{label}: chat template for {messages:?}"
            );
            assert_eq!(
                tokenizer.encode(&rendered, false).unwrap(),
                ids(&chat["ids"]),
                "{label}: chat ids for {messages:?}"
            );
            checked += 1;
        }
    }
    checked
}

/// Checks every variant of a reference against tokenizers built from `file`'s
/// metadata with the variant's edits, the first (unedited) one through a GGUF
/// file read back from bytes.
fn check_reference(label: &str, file: &GgufFile, path: &Path, reference: &Value) -> usize {
    let n_tokens = match file.get("tokenizer.ggml.tokens").unwrap() {
        MetadataValue::Array(tokens) => tokens.len(),
        other => panic!("tokens are {}", other.type_name()),
    };
    let mut checked = 0;
    for variant in reference["variants"].as_array().unwrap() {
        let mut metadata = file.metadata().clone();
        apply_edits(&mut metadata, variant);
        let tokenizer = if metadata == *file.metadata() {
            tokenizer_from_gguf(file, path)
        } else {
            let edited = GgufFile::from_bytes(gguf_bytes(&metadata)).unwrap();
            tokenizer_from_gguf(&edited, path)
        }
        .unwrap_or_else(|e| panic!("{label} [{}]: {e}", variant["name"]));
        checked += check_variant(label, &tokenizer, n_tokens, reference, variant);
    }
    checked
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let path = repo_root().join(SMOLLM2);
    let file = open_gguf(&path);
    let reference = load_reference("smollm2-tokenizer.json");
    let checked = check_reference("SmolLM2", &file, &path, &reference);
    assert!(checked >= 35, "only {checked} cases were checked");
}

#[test]
fn smollm2_gguf_prompts_match_transformers() {
    let path = repo_root().join(SMOLLM2);
    let file = open_gguf(&path);
    let tokenizer = tokenizer_from_gguf(&file, &path).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.pad_id(), 2);
    let reference = load_reference("smollm2-tokenizer.json");
    let chats = reference["variants"][0]["chat"].as_array().unwrap();
    let mut checked = 0;
    for chat in chats {
        let messages = chat["messages"].as_array().unwrap();
        if !chat["add_generation_prompt"].as_bool().unwrap() || messages.len() > 2 {
            continue;
        }
        let (system, user) = match messages.as_slice() {
            [user] => (None, user),
            [system, user] => (Some(system["content"].as_str().unwrap().to_owned()), user),
            _ => unreachable!(),
        };
        let format = PromptFormat {
            template: TemplateChoice::Model,
            system,
        };
        let encoded = format
            .encode(&tokenizer, user["content"].as_str().unwrap())
            .unwrap();
        assert_eq!(encoded.text, chat["rendered"].as_str().unwrap());
        assert_eq!(encoded.input_ids, ids(&chat["ids"]));
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} prompts were checked");
}

#[test]
fn llama_sentencepiece_gguf_matches_transformers() {
    let path = fixture("llama-spm.gguf");
    let file = open_gguf(&path);
    let reference = load_reference("llama-spm-tokenizer.json");
    let checked = check_reference("llama-spm", &file, &path, &reference);
    assert!(checked >= 100, "only {checked} cases were checked");
}

#[test]
fn llama3_byte_level_gguf_matches_transformers() {
    let path = fixture("llama3-bpe.gguf");
    let file = open_gguf(&path);
    let reference = load_reference("llama3-bpe-tokenizer.json");
    let checked = check_reference("llama3-bpe", &file, &path, &reference);
    assert!(checked >= 150, "only {checked} cases were checked");
}

#[test]
fn references_cover_the_required_pre_tokenizers() {
    let reference = load_reference("llama3-bpe-tokenizer.json");
    let covered: Vec<&str> = reference["variants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["set"].get("tokenizer.ggml.pre")?["value"].as_str())
        .collect();
    for pre in [
        "default", "gpt-2", "smollm", "llama3", "qwen2", "qwen35", "tekken", "gpt-4o",
    ] {
        assert!(covered.contains(&pre), "no reference for pre {pre}");
        assert!(PRE_TOKENIZERS.iter().any(|(name, _)| *name == pre));
    }
}

// ---------------------------------------------------------------------------
// Malformed metadata.

/// Serializes metadata as a GGUF v3 file without tensors.
fn gguf_bytes(metadata: &BTreeMap<String, MetadataValue>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend_from_slice(&value_type(value).to_le_bytes());
        write_value(&mut out, value);
    }
    out
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn value_type(value: &MetadataValue) -> u32 {
    match value {
        MetadataValue::U8(_) => 0,
        MetadataValue::I8(_) => 1,
        MetadataValue::U16(_) => 2,
        MetadataValue::I16(_) => 3,
        MetadataValue::U32(_) => 4,
        MetadataValue::I32(_) => 5,
        MetadataValue::F32(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
        MetadataValue::U64(_) => 10,
        MetadataValue::I64(_) => 11,
        MetadataValue::F64(_) => 12,
    }
}

fn array_type(array: &MetadataArray) -> u32 {
    match array {
        MetadataArray::U8(_) => 0,
        MetadataArray::I8(_) => 1,
        MetadataArray::U16(_) => 2,
        MetadataArray::I16(_) => 3,
        MetadataArray::U32(_) => 4,
        MetadataArray::I32(_) => 5,
        MetadataArray::F32(_) => 6,
        MetadataArray::Bool(_) => 7,
        MetadataArray::String(_) => 8,
        MetadataArray::Array(_) => 9,
        MetadataArray::U64(_) => 10,
        MetadataArray::I64(_) => 11,
        MetadataArray::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.push(*v),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(v) => write_string(out, v),
        MetadataValue::Array(array) => write_array(out, array),
    }
}

fn write_array(out: &mut Vec<u8>, array: &MetadataArray) {
    out.extend_from_slice(&array_type(array).to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    match array {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        MetadataArray::Bool(v) => v.iter().for_each(|&x| out.push(u8::from(x))),
        MetadataArray::String(v) => v.iter().for_each(|x| write_string(out, x)),
        MetadataArray::Array(v) => v.iter().for_each(|x| write_array(out, x)),
    }
}

fn strings(values: &[&str]) -> MetadataValue {
    MetadataValue::Array(MetadataArray::String(
        values.iter().map(|&v| v.to_owned()).collect(),
    ))
}

/// A hand-made byte-level vocabulary: the letters a, b, c, their merges and
/// two control tokens.
fn tiny_gpt2() -> BTreeMap<String, MetadataValue> {
    let mut metadata = BTreeMap::new();
    let mut put = |key: &str, value: MetadataValue| {
        metadata.insert(key.to_owned(), value);
    };
    put(
        "general.architecture",
        MetadataValue::String("llama".into()),
    );
    put("tokenizer.ggml.model", MetadataValue::String("gpt2".into()));
    put("tokenizer.ggml.pre", MetadataValue::String("smollm".into()));
    put(
        "tokenizer.ggml.tokens",
        strings(&["<bos>", "<eos>", "a", "b", "c", "Ġ", "ab", "abc", "Ġab"]),
    );
    put(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(vec![3, 3, 1, 1, 1, 1, 1, 1, 1])),
    );
    put("tokenizer.ggml.merges", strings(&["a b", "ab c", "Ġ ab"]));
    put("tokenizer.ggml.bos_token_id", MetadataValue::U32(0));
    put("tokenizer.ggml.eos_token_id", MetadataValue::U32(1));
    put("tokenizer.ggml.add_bos_token", MetadataValue::Bool(true));
    put(
        "tokenizer.chat_template",
        MetadataValue::String("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}".into()),
    );
    metadata
}

fn build(metadata: &BTreeMap<String, MetadataValue>) -> Result<TextTokenizer, ModelError> {
    let file = GgufFile::from_bytes(gguf_bytes(metadata)).expect("the test GGUF parses");
    tokenizer_from_gguf(&file, Path::new("hand-made.gguf"))
}

/// Builds `metadata` after `edit` and returns the error message, which must
/// name `key`.
fn error_for(edit: impl FnOnce(&mut Metadata), key: &str) -> String {
    let mut metadata = tiny_gpt2();
    edit(&mut metadata);
    let error = build(&metadata).expect_err("malformed metadata must be an error");
    let message = error.to_string();
    assert!(
        matches!(&error, ModelError::GgufTokenizer { key: k, .. } if k == key),
        "expected an error for {key}, got: {message}"
    );
    assert!(message.contains(key), "{message}");
    assert!(message.contains("hand-made.gguf"), "{message}");
    message
}

#[test]
fn hand_made_gguf_builds() {
    let tokenizer = build(&tiny_gpt2()).unwrap();
    assert_eq!(tokenizer.encode("abc ab", true).unwrap(), [0, 7, 8]);
    assert_eq!(tokenizer.encode("abc<eos>", false).unwrap(), [7, 1]);
    assert_eq!(tokenizer.decode(&[0, 7, 8, 1], true).unwrap(), "abc ab");
    assert_eq!(tokenizer.special_tokens().bos.as_deref(), Some("<bos>"));
    assert_eq!(tokenizer.special_tokens().eos.as_deref(), Some("<eos>"));
    assert_eq!(tokenizer.special_tokens().unk, None);
    let rendered = render_jinja(
        tokenizer.chat_template().unwrap(),
        &[Message::new("user", "abc")],
        false,
        tokenizer.special_tokens(),
    )
    .unwrap();
    assert_eq!(rendered, "<bos>abc<eos>");
}

#[test]
fn metadata_api_matches_file_api() {
    let metadata = tiny_gpt2();
    let a = tokenizer_from_metadata(&metadata, Path::new("x.gguf")).unwrap();
    let b = build(&metadata).unwrap();
    assert_eq!(
        a.encode("cab abc", true).unwrap(),
        b.encode("cab abc", true).unwrap()
    );
}

type Metadata = BTreeMap<String, MetadataValue>;

fn set(key: &str, value: MetadataValue) -> impl FnOnce(&mut Metadata) {
    let key = key.to_owned();
    move |m| {
        m.insert(key, value);
    }
}

fn remove(key: &str) -> impl FnOnce(&mut Metadata) + '_ {
    move |m| {
        m.remove(key);
    }
}

fn i32s(values: Vec<i32>) -> MetadataValue {
    MetadataValue::Array(MetadataArray::I32(values))
}

fn f32s(values: Vec<f32>) -> MetadataValue {
    MetadataValue::Array(MetadataArray::F32(values))
}

fn text(value: &str) -> MetadataValue {
    MetadataValue::String(value.to_owned())
}

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const MERGES: &str = "tokenizer.ggml.merges";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";

#[test]
fn missing_and_mistyped_keys_are_errors() {
    for key in [MODEL, TOKENS, MERGES] {
        let message = error_for(remove(key), key);
        assert!(message.contains("missing"), "{message}");
    }
    error_for(set(MODEL, MetadataValue::U32(2)), MODEL);
    error_for(set(TOKENS, i32s(vec![1, 2])), TOKENS);
    error_for(set(TOKENS, strings(&[])), TOKENS);
    error_for(set(MERGES, text("a b")), MERGES);
    error_for(set(TOKEN_TYPE, strings(&["3"])), TOKEN_TYPE);
    error_for(set(SCORES, i32s(vec![0; 9])), SCORES);
    let key = "tokenizer.ggml.add_bos_token";
    error_for(set(key, MetadataValue::U8(1)), key);
    let key = "tokenizer.chat_template";
    error_for(set(key, MetadataValue::Bool(true)), key);
    let key = "tokenizer.ggml.bos_token_id";
    error_for(set(key, text("0")), key);
}

#[test]
fn unsupported_models_and_pre_tokenizers_are_named() {
    let message = error_for(set(MODEL, text("t5")), MODEL);
    assert!(message.contains("\"t5\""), "{message}");
    assert!(message.contains("gpt2, llama"), "{message}");

    let message = error_for(set(PRE, text("starcoder")), PRE);
    assert!(message.contains("\"starcoder\""), "{message}");
    for supported in ["default", "gpt-2", "smollm", "llama-bpe", "qwen2"] {
        assert!(message.contains(supported), "{message}");
    }

    let message = error_for(
        |m: &mut Metadata| {
            set(MODEL, text("llama"))(m);
            set(PRE, text("llama-bpe"))(m);
        },
        PRE,
    );
    assert!(message.contains("\"llama-bpe\""), "{message}");

    let arch = "general.architecture";
    let message = error_for(
        |m: &mut Metadata| {
            set(MODEL, text("llama"))(m);
            set(arch, text("gemma2"))(m);
        },
        arch,
    );
    assert!(message.contains("gemma2"), "{message}");
}

#[test]
fn lengths_that_disagree_are_errors() {
    let message = error_for(set(TOKEN_TYPE, i32s(vec![1, 1])), TOKEN_TYPE);
    assert!(
        message.contains("2 entries") && message.contains("9 tokens"),
        "{message}"
    );
    error_for(set(SCORES, f32s(vec![0.0; 10])), SCORES);
}

#[test]
fn ids_out_of_range_are_errors() {
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        let message = error_for(set(key, MetadataValue::U32(9)), key);
        assert!(message.contains("out of range"), "{message}");
        error_for(set(key, MetadataValue::I32(-1)), key);
        error_for(set(key, MetadataValue::U64(u64::MAX)), key);
    }
}

#[test]
fn malformed_merges_are_errors() {
    let message = error_for(set(MERGES, strings(&["a b c"])), MERGES);
    assert!(message.contains("\"a b c\""), "{message}");
    error_for(set(MERGES, strings(&["ab"])), MERGES);
    // Merges whose parts or result are not in the vocabulary.
    error_for(set(MERGES, strings(&["b c"])), MERGES);
    error_for(set(MERGES, strings(&["x y"])), MERGES);
}

#[test]
fn sentencepiece_needs_merges_or_scores() {
    let sentencepiece = |m: &mut Metadata| {
        set(MODEL, text("llama"))(m);
        m.remove(PRE);
        m.remove(MERGES);
    };
    let message = error_for(sentencepiece, SCORES);
    assert!(message.contains(MERGES), "{message}");
    let mut scores = vec![0.0f32; 9];
    scores[4] = f32::NAN;
    let message = error_for(
        |m: &mut Metadata| {
            sentencepiece(m);
            set(SCORES, f32s(scores))(m);
        },
        SCORES,
    );
    assert!(message.contains("NaN"), "{message}");

    // With scores, merges are recovered: "abc" scores best.
    let mut metadata = tiny_gpt2();
    sentencepiece(&mut metadata);
    set(
        SCORES,
        f32s(vec![0.0, 0.0, -5.0, -5.0, -5.0, -5.0, -2.0, -1.0, -3.0]),
    )(&mut metadata);
    let tokenizer = build(&metadata).unwrap();
    assert_eq!(tokenizer.encode("abc", false).unwrap(), [7]);
}

#[test]
fn missing_real_model_message_names_setup() {
    let result = std::panic::catch_unwind(|| open_gguf(Path::new("/nonexistent/model.gguf")));
    let payload = result.expect_err("a missing model must fail");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("run `just setup`"), "{message}");
}
