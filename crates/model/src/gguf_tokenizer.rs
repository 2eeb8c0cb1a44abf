//! The tokenizer a GGUF file describes in its own metadata, built as HF
//! transformers builds it for `AutoTokenizer.from_pretrained(dir, gguf_file=name)`
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`, 5.x).
//!
//! A GGUF file has no `tokenizer.json`; llama.cpp stores the vocabulary under
//! `tokenizer.ggml.*` keys instead:
//!
//! - `tokenizer.ggml.model` `"gpt2"`: byte-level BPE. Tokens are spelled in
//!   GPT-2's byte alphabet (a token spelled otherwise is re-spelled from its
//!   UTF-8 bytes), merges come from `tokenizer.ggml.merges`, and
//!   `tokenizer.ggml.pre` picks the split regex ([`PRE_TOKENIZERS`]).
//! - `tokenizer.ggml.model` `"llama"`: SentencePiece-style BPE with byte
//!   fallback, `▁` for spaces prepended to the first word. Merges come from
//!   `tokenizer.ggml.merges` when the file has them, and otherwise are
//!   recovered from the vocabulary and `tokenizer.ggml.scores`, best score
//!   first, as transformers' `generate_merges` does.
//!
//! Tokens of type control (3) become special added tokens and those of type
//! user-defined (4) plain added tokens, matched whole in the text. The
//! BOS/EOS/UNK/padding tokens named by id, and the defaults transformers'
//! tokenizer classes bring (`<|endoftext|>` for `gpt2`; `<s>`, `</s>`,
//! `<unk>` for `llama`), are special added tokens too. The post-processor adds
//! BOS and EOS as `tokenizer.ggml.add_bos_token` and `add_eos_token` say;
//! `add_bos_token` defaults to true for `llama` and false for `gpt2`.
//!
//! One deliberate difference: transformers adds a default or named special
//! token that the vocabulary lacks under a new id past its end (a `gpt2` file
//! without `<|endoftext|>` gets it at id `n_vocab`). Such an id has no row in
//! the embedding matrix, so it is left out here: every id this tokenizer
//! produces is below the number of tokens in the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use ihs_gguf::{GgufFile, MetadataArray, MetadataValue};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat::SpecialTokens;
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

pub const MODEL_KEY: &str = "tokenizer.ggml.model";
pub const PRE_KEY: &str = "tokenizer.ggml.pre";
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
pub const MERGES_KEY: &str = "tokenizer.ggml.merges";
pub const TOKEN_TYPE_KEY: &str = "tokenizer.ggml.token_type";
pub const SCORES_KEY: &str = "tokenizer.ggml.scores";
pub const BOS_KEY: &str = "tokenizer.ggml.bos_token_id";
pub const EOS_KEY: &str = "tokenizer.ggml.eos_token_id";
pub const UNK_KEY: &str = "tokenizer.ggml.unknown_token_id";
pub const PAD_KEY: &str = "tokenizer.ggml.padding_token_id";
pub const ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";
pub const ADD_EOS_KEY: &str = "tokenizer.ggml.add_eos_token";
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";
const ARCHITECTURE_KEY: &str = "general.architecture";

/// Values of `tokenizer.ggml.model` this module builds.
pub const SUPPORTED_MODELS: [&str; 2] = ["gpt2", "llama"];

/// llama.cpp's token types (`llama_token_type`) that change how a token is added.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Architectures whose `llama`-model vocabulary transformers rebuilds in its
/// own way (Gemma's respelled spaces and merge order, Phi-3's normalizer).
const SENTENCEPIECE_SPECIAL_ARCHITECTURES: [&str; 4] = ["gemma", "gemma2", "gemma3", "phi3"];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Values of `tokenizer.ggml.pre` for a `gpt2` vocabulary and the regex that
/// splits text before byte-level BPE, or `None` for GPT-2's own split
/// (transformers' `GPT2Tokenizer`). The regexes are transformers'
/// `GGUF_PRE_TOKENIZER_SPLITS`; a name it does not list gets GPT-2's split
/// there, and is an error here unless it is listed below. `smollm` is one of
/// those: llama.cpp first cuts every digit off on its own, transformers does
/// not, and this follows transformers. No merge of `SmolLM2`'s vocabulary
/// involves a number character, so the two differ only around whitespace
/// that precedes a digit.
pub const PRE_TOKENIZERS: [(&str, Option<&str>); 26] = [
    ("default", None),
    ("gpt-2", None),
    ("smollm", None),
    ("llama3", Some(LLAMA3_SPLIT)),
    ("llama-v3", Some(LLAMA3_SPLIT)),
    ("llama-bpe", Some(LLAMA3_SPLIT)),
    ("falcon3", Some(LLAMA3_SPLIT)),
    ("falcon-h1", Some(LLAMA3_SPLIT)),
    ("pixtral", Some(LLAMA3_SPLIT)),
    ("midm-2.0", Some(LLAMA3_SPLIT)),
    ("lfm2", Some(LLAMA3_SPLIT)),
    ("jina-v5-nano", Some(LLAMA3_SPLIT)),
    ("dbrx", Some(LLAMA3_SPLIT)),
    ("smaug-bpe", Some(LLAMA3_SPLIT)),
    ("tekken", Some(TEKKEN_SPLIT)),
    ("qwen2", Some(QWEN2_SPLIT)),
    ("deepseek-r1-qwen", Some(QWEN2_SPLIT)),
    ("kormo", Some(QWEN2_SPLIT)),
    ("f2llmv2", Some(QWEN2_SPLIT)),
    ("megrez", Some(QWEN2_SPLIT)),
    ("qwen35", Some(QWEN35_SPLIT)),
    ("gpt-4o", Some(GPT4O_SPLIT)),
    ("llama4", Some(GPT4O_SPLIT)),
    ("kanana2", Some(GPT4O_SPLIT)),
    ("talkie", Some(GPT4O_SPLIT)),
    ("minimax-m2", Some(GPT4O_SPLIT)),
];

/// Builds the tokenizer that `file`'s metadata describes, with its special
/// tokens and `tokenizer.chat_template`. `path` names the file in errors.
pub fn tokenizer_from_gguf(file: &GgufFile, path: &Path) -> Result<TextTokenizer> {
    tokenizer_from_metadata(file.metadata(), path)
}

/// [`tokenizer_from_gguf`] for metadata read elsewhere.
pub fn tokenizer_from_metadata(
    metadata: &BTreeMap<String, MetadataValue>,
    path: &Path,
) -> Result<TextTokenizer> {
    let meta = Metadata { metadata, path };
    let kind = match meta
        .string(MODEL_KEY)?
        .ok_or_else(|| meta.missing(MODEL_KEY))?
    {
        "gpt2" => Kind::ByteLevel,
        "llama" => {
            if let Some(arch) = meta.string(ARCHITECTURE_KEY)? {
                if SENTENCEPIECE_SPECIAL_ARCHITECTURES.contains(&arch) {
                    return Err(meta.error(
                        ARCHITECTURE_KEY,
                        format!(
                            "the \"llama\" tokenizer of architecture {arch:?} is built differently \
                             by transformers and is not supported"
                        ),
                    ));
                }
            }
            Kind::SentencePiece
        }
        other => {
            return Err(meta.error(
                MODEL_KEY,
                format!(
                    "unsupported tokenizer model {other:?}; supported: {}",
                    SUPPORTED_MODELS.join(", ")
                ),
            ))
        }
    };

    let tokens = meta
        .strings(TOKENS_KEY)?
        .ok_or_else(|| meta.missing(TOKENS_KEY))?;
    if tokens.is_empty() {
        return Err(meta.error(TOKENS_KEY, "the vocabulary is empty".to_owned()));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(meta.error(
            TOKENS_KEY,
            format!("{} tokens do not fit u32 ids", tokens.len()),
        ));
    }
    let token_types = meta.ints(TOKEN_TYPE_KEY)?;
    meta.check_len(
        TOKEN_TYPE_KEY,
        token_types.as_ref().map(Vec::len),
        tokens.len(),
    )?;
    let scores = meta.floats(SCORES_KEY)?;
    meta.check_len(SCORES_KEY, scores.as_ref().map(Vec::len), tokens.len())?;
    let merges = meta.strings(MERGES_KEY)?;

    let bos = meta.token_id(BOS_KEY, tokens.len())?;
    let eos = meta.token_id(EOS_KEY, tokens.len())?;
    let unk = meta.token_id(UNK_KEY, tokens.len())?;
    let pad = meta.token_id(PAD_KEY, tokens.len())?;
    let add_bos = meta
        .bool(ADD_BOS_KEY)?
        .unwrap_or(kind == Kind::SentencePiece);
    let add_eos = meta.bool(ADD_EOS_KEY)?.unwrap_or(false);
    let chat_template = meta.string(CHAT_TEMPLATE_KEY)?.map(str::to_owned);
    let pre = meta.string(PRE_KEY)?;

    let mut tokenizer = match kind {
        Kind::ByteLevel => {
            let merges = merges.ok_or_else(|| meta.missing(MERGES_KEY))?;
            byte_level_tokenizer(&meta, tokens, merges, pre)?
        }
        Kind::SentencePiece => {
            let merges = if let Some(merges) = merges {
                split_merges(&meta, merges)?
            } else {
                let scores = scores.as_deref().ok_or_else(|| {
                    meta.error(
                        SCORES_KEY,
                        format!("is required to recover the merges when {MERGES_KEY} is absent"),
                    )
                })?;
                generate_merges(&meta, tokens, scores)?
            };
            sentencepiece_tokenizer(&meta, tokens, merges, pre)?
        }
    };

    let name = |id: Option<u32>| id.map(|id| tokens[id as usize].clone());
    let special = SpecialTokens {
        bos: name(bos),
        eos: name(eos),
        unk: name(unk),
        pad: name(pad),
    };
    add_tokens(
        &mut tokenizer,
        kind,
        tokens,
        token_types.as_deref(),
        &special,
    );

    // The id of a named token as transformers looks it up: by its string.
    let resolve = |token: &Option<String>, id: Option<u32>| {
        token
            .as_ref()
            .zip(id)
            .map(|(token, id)| (token.clone(), tokenizer.token_to_id(token).unwrap_or(id)))
    };
    let bos_piece = if add_bos {
        resolve(&special.bos, bos)
    } else {
        None
    };
    let eos_piece = if add_eos {
        resolve(&special.eos, eos)
    } else {
        None
    };
    let post_processor = template_processing(bos_piece.as_ref(), eos_piece.as_ref())
        .map_err(|message| meta.error(ADD_BOS_KEY, message))?;
    tokenizer.with_post_processor(Some(post_processor));

    Ok(TextTokenizer::new(
        tokenizer,
        special,
        chat_template,
        path.to_path_buf(),
    ))
}

/// Adds the added tokens in the order transformers adds them, which decides
/// which flags a token listed twice keeps: the tokenizer class's defaults,
/// control tokens (special), user-defined tokens (not special), then the
/// named BOS/EOS/UNK/padding tokens (special). Tokens the vocabulary lacks are
/// left out rather than given ids past its end.
fn add_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    kind: Kind,
    tokens: &[String],
    token_types: Option<&[i64]>,
    special: &SpecialTokens,
) {
    let defaults: &[&str] = match kind {
        Kind::ByteLevel => &["<|endoftext|>"],
        Kind::SentencePiece => &["<s>", "</s>", "<unk>"],
    };
    let defaults: Vec<AddedToken> = defaults
        .iter()
        .filter(|token| tokenizer.token_to_id(token).is_some())
        .map(|token| AddedToken::from(*token, true))
        .collect();
    tokenizer.add_tokens(&defaults);

    if let Some(types) = token_types {
        let alphabet: HashSet<char> = byte_alphabet().into_iter().collect();
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|&(token, &token_type)| {
                token_type == TOKEN_TYPE_CONTROL
                    // In a byte-level vocabulary every real token is spelled in
                    // the byte alphabet; transformers skips control tokens that are not.
                    && (kind == Kind::SentencePiece || token.chars().all(|c| alphabet.contains(&c)))
            })
            .map(|(token, _)| AddedToken::from(token.as_str(), true).normalized(false))
            .collect();
        tokenizer.add_special_tokens(&control);
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|&(token, &token_type)| {
                token_type == TOKEN_TYPE_USER_DEFINED && tokenizer.token_to_id(token).is_some()
            })
            .map(|(token, _)| AddedToken::from(token.as_str(), false).normalized(false))
            .collect();
        tokenizer.add_tokens(&user_defined);
    }

    let mut named: Vec<AddedToken> = Vec::new();
    for token in [&special.bos, &special.eos, &special.unk, &special.pad]
        .into_iter()
        .flatten()
    {
        if tokenizer.token_to_id(token).is_some() && !named.iter().any(|t| &t.content == token) {
            named.push(AddedToken::from(token.as_str(), true).normalized(false));
        }
    }
    tokenizer.add_special_tokens(&named);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `gpt2`: byte-level BPE.
    ByteLevel,
    /// `llama`: SentencePiece-style BPE with byte fallback.
    SentencePiece,
}

fn byte_level_tokenizer(
    meta: &Metadata<'_>,
    tokens: &[String],
    merges: &[String],
    pre: Option<&str>,
) -> Result<tokenizers::Tokenizer> {
    let pre_name = pre.unwrap_or("default");
    let split = PRE_TOKENIZERS
        .iter()
        .find(|(name, _)| *name == pre_name)
        .map(|&(_, split)| split)
        .ok_or_else(|| {
            meta.error(
                PRE_KEY,
                format!(
                    "unsupported pre-tokenizer {pre_name:?} for tokenizer model \"gpt2\"; supported: {}",
                    PRE_TOKENIZERS.map(|(name, _)| name).join(", ")
                ),
            )
        })?;

    let alphabet = byte_alphabet();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    // Later duplicates win, as in the Python dict transformers builds.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            let spelled = if token.chars().all(|c| in_alphabet.contains(&c)) {
                token.clone()
            } else {
                token.bytes().map(|b| alphabet[usize::from(b)]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, split_merges(meta, merges)?)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| meta.error(MERGES_KEY, e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let pre_tokenizer: PreTokenizerWrapper = match split {
        None => ByteLevel::new(false, true, true).into(),
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| meta.error(PRE_KEY, format!("the split regex does not compile: {e}")))?;
            PreTokenizerSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

fn sentencepiece_tokenizer(
    meta: &Metadata<'_>,
    tokens: &[String],
    merges: Merges,
    pre: Option<&str>,
) -> Result<tokenizers::Tokenizer> {
    if let Some(pre) = pre.filter(|&pre| pre != "default") {
        return Err(meta.error(
            PRE_KEY,
            format!(
                "unsupported pre-tokenizer {pre:?} for tokenizer model \"llama\"; supported: default"
            ),
        ));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| meta.error(MERGES_KEY, e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    let replace = Replace::new("▁", " ").map_err(|e| meta.error(MODEL_KEY, e.to_string()))?;
    let decoders: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ];
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Splits `"left right"` merges at their one space.
fn split_merges(meta: &Metadata<'_>, merges: &[String]) -> Result<Merges> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((left, right)) if !right.contains(' ') => Ok((left.to_owned(), right.to_owned())),
            _ => Err(meta.error(
                MERGES_KEY,
                format!("merge {index} ({merge:?}) is not two tokens joined by one space"),
            )),
        })
        .collect()
}

/// Recovers BPE merges from a vocabulary and its scores as transformers'
/// `generate_merges(vocab, vocab_scores)` does: every split of a token into
/// two tokens of the vocabulary is a merge; merges are ordered by the merged
/// token's score (best first), then by the lengths of the left and right parts
/// (longest first), keeping the vocabulary order among equals.
fn generate_merges(meta: &Metadata<'_>, tokens: &[String], scores: &[f64]) -> Result<Merges> {
    if let Some(index) = scores.iter().position(|score| score.is_nan()) {
        return Err(meta.error(SCORES_KEY, format!("the score of token {index} is NaN")));
    }
    // Python dicts keep the first position of a key and the last value.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (id, (token, &value)) in tokens.iter().zip(scores).enumerate() {
        if index.insert(token, id).is_none() {
            order.push(token);
        }
        score.insert(token, value);
    }

    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(left, right)| index.contains_key(left) && index.contains_key(right))
            .map(|(left, right)| (left, right, score[token]))
            .collect();
        local.sort_by_key(|&(left, right, _)| (index[left], index[right]));
        merges.extend(local);
    }
    // -0.0 and 0.0 are equal to Python.
    let key = |&(left, right, value): &(&str, &str, f64)| {
        (
            if value == 0.0 { 0.0 } else { value },
            left.chars().count(),
            right.chars().count(),
        )
    };
    merges.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
    });
    Ok(merges
        .into_iter()
        .map(|(left, right, _)| (left.to_owned(), right.to_owned()))
        .collect())
}

/// The post-processor transformers' `update_post_processor` writes:
/// `[BOS] $A [EOS]` and `[BOS] $A [EOS] [BOS] $B:1 [EOS]` (pair pieces typed 1).
fn template_processing(
    bos: Option<&(String, u32)>,
    eos: Option<&(String, u32)>,
) -> std::result::Result<TemplateProcessing, String> {
    use serde_json::{json, Map, Value};

    let special =
        |token: &str, type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
    let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    if let Some((token, _)) = bos {
        single.push(special(token, 0));
    }
    single.push(sequence("A", 0));
    if let Some((token, _)) = eos {
        single.push(special(token, 0));
    }
    let mut pair = single.clone();
    if let Some((token, _)) = bos {
        pair.push(special(token, 1));
    }
    pair.push(sequence("B", 1));
    if let Some((token, _)) = eos {
        pair.push(special(token, 1));
    }
    let mut tokens = Map::new();
    for (token, id) in bos.into_iter().chain(eos) {
        tokens.insert(
            token.clone(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    let spec = json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": Value::Object(tokens),
    });
    serde_json::from_value(spec).map_err(|e| format!("cannot build the post-processor: {e}"))
}

/// GPT-2's `bytes_to_unicode`: the character that spells each byte.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                c
            }
        })
        .collect()
}

/// Typed access to the metadata, with errors that name the key.
struct Metadata<'a> {
    metadata: &'a BTreeMap<String, MetadataValue>,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    fn error(&self, key: &str, message: String) -> ModelError {
        ModelError::GgufTokenizer {
            path: PathBuf::from(self.path),
            key: key.to_owned(),
            message,
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        self.error(key, "the key is missing".to_owned())
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &MetadataValue) -> ModelError {
        self.error(
            key,
            format!("expected {expected}, found {}", found.type_name()),
        )
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::Bool(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    /// Reads a token id and checks it against the vocabulary size.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        let out_of_range = |id: &dyn std::fmt::Display| {
            self.error(
                key,
                format!("token id {id} is out of range for {n_tokens} tokens"),
            )
        };
        match (value.as_u64(), value.as_i64()) {
            (Some(id), _) => match usize::try_from(id) {
                Ok(index) if index < n_tokens => Ok(Some(index as u32)),
                _ => Err(out_of_range(&id)),
            },
            (None, Some(negative)) => Err(out_of_range(&negative)),
            (None, None) => Err(self.wrong_type(key, "an integer", value)),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a MetadataArray>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::Array(array)) => Ok(Some(array)),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<&'a [String]>> {
        match self.array(key)? {
            None => Ok(None),
            Some(MetadataArray::String(values)) => Ok(Some(values)),
            Some(other) => Err(self.error(
                key,
                format!("expected an array of string, found {}", other.type_name()),
            )),
        }
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        fn widen<T: Copy + Into<i64>>(values: &[T]) -> Vec<i64> {
            values.iter().map(|&v| v.into()).collect()
        }
        let values = match self.array(key)? {
            None => return Ok(None),
            Some(MetadataArray::I8(v)) => widen(v),
            Some(MetadataArray::U8(v)) => widen(v),
            Some(MetadataArray::I16(v)) => widen(v),
            Some(MetadataArray::U16(v)) => widen(v),
            Some(MetadataArray::I32(v)) => widen(v),
            Some(MetadataArray::U32(v)) => widen(v),
            Some(MetadataArray::I64(v)) => v.clone(),
            Some(MetadataArray::U64(v)) => v
                .iter()
                .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
            Some(other) => {
                return Err(self.error(
                    key,
                    format!("expected an array of integers, found {}", other.type_name()),
                ))
            }
        };
        Ok(Some(values))
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.array(key)? {
            None => Ok(None),
            Some(MetadataArray::F32(v)) => Ok(Some(v.iter().map(|&v| f64::from(v)).collect())),
            Some(MetadataArray::F64(v)) => Ok(Some(v.clone())),
            Some(other) => Err(self.error(
                key,
                format!("expected an array of f32, found {}", other.type_name()),
            )),
        }
    }

    /// Checks that a per-token array has one entry per token.
    fn check_len(&self, key: &str, len: Option<usize>, n_tokens: usize) -> Result<()> {
        match len {
            Some(len) if len != n_tokens => Err(self.error(
                key,
                format!("has {len} entries but {TOKENS_KEY} has {n_tokens} tokens"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet[usize::from(b' ')], 'Ġ');
        assert_eq!(alphabet[usize::from(b'\n')], 'Ċ');
        assert_eq!(alphabet[usize::from(b'A')], 'A');
        assert_eq!(alphabet[0xAD], 'Ń');
        let unique: HashSet<char> = alphabet.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for (name, split) in PRE_TOKENIZERS {
            if let Some(regex) = split {
                Split::new(
                    SplitPattern::Regex(regex.to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn generated_merges_follow_scores_then_lengths() {
        let metadata = BTreeMap::new();
        let meta = Metadata {
            metadata: &metadata,
            path: Path::new("x.gguf"),
        };
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .map(str::to_owned)
            .to_vec();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let merges = generate_merges(&meta, &tokens, &scores).unwrap();
        let merges: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        // "abc" scores best; its split with the longer left part comes first.
        assert_eq!(merges, [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
