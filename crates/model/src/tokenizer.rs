//! The tokenizer of an HF model folder (`tokenizer.json` through the
//! `tokenizers` crate) with its special tokens and chat template, and the
//! prompt format that turns a user request into model input.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::{self, Builtin, Message, SpecialTokens};
use crate::error::{ModelError, Result};

/// A tokenizer with the special tokens and chat template of `tokenizer_config.json`.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (when present) and
    /// `chat_template.jinja` (transformers 5 saves the template there; it
    /// wins over one inside `tokenizer_config.json`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| ModelError::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer {
                path: config_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?
        } else {
            Value::Null
        };

        let token = |key: &str| match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(added)) => added
                .get("content")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        let special = SpecialTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
            unk: token("unk_token"),
            pad: token("pad_token"),
        };

        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.is_file() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?)
        } else {
            template_from_config(&config)
        };

        Ok(Self::new(inner, special, chat_template, path))
    }

    /// Wraps a tokenizer built elsewhere (from GGUF metadata, say).
    #[must_use]
    pub fn new(
        inner: tokenizers::Tokenizer,
        special: SpecialTokens,
        chat_template: Option<String>,
        path: PathBuf,
    ) -> Self {
        Self {
            inner,
            special,
            chat_template,
            path,
        }
    }

    /// Encodes `text`; `add_special_tokens` runs the post-processor (BOS for Llama).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| self.error(format!("failed to encode {text:?}: {e}")))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.error(format!("failed to decode {ids:?}: {e}")))
    }

    /// Returns the token's own string (with the word-start marker, if any).
    #[must_use]
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[must_use]
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Returns the vocabulary size including added tokens.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    #[must_use]
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    #[must_use]
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Returns the id used for padding: the pad token, else EOS, else 0.
    /// Padding ids never influence real tokens because they are masked.
    #[must_use]
    pub fn pad_id(&self) -> u32 {
        [&self.special.pad, &self.special.eos]
            .into_iter()
            .flatten()
            .find_map(|token| self.token_to_id(token))
            .unwrap_or(0)
    }

    #[must_use]
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}

/// Reads `chat_template` as a string or as a list of named templates, where
/// the one named "default" is used.
fn template_from_config(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(template) => Some(template.clone()),
        Value::Array(named) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|entry| entry.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// The chat template that turns a request into a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's own Jinja template.
    Model,
    /// A built-in `FastChat` format.
    Builtin(Builtin),
    /// The request text as is, tokenized with special tokens.
    Raw,
}

impl TemplateChoice {
    /// Parses `model`, `raw` or a built-in name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "model" => Ok(Self::Model),
            "raw" => Ok(Self::Raw),
            other => Builtin::from_name(other).map(Self::Builtin),
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Model => "model",
            Self::Raw => "raw",
            Self::Builtin(b) => b.name(),
        }
    }
}

/// A rendered prompt and the token ids it encodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    pub text: String,
    pub input_ids: Vec<u32>,
}

/// A chat template plus an optional system prompt.
#[derive(Debug, Clone)]
pub struct PromptFormat {
    pub template: TemplateChoice,
    /// `None` leaves the template's own default in place.
    pub system: Option<String>,
}

impl PromptFormat {
    /// Renders one user request with the assistant's generation prompt and
    /// encodes it. A Jinja template writes its own special tokens, so its text
    /// is encoded without adding any, as `apply_chat_template` does.
    pub fn encode(&self, tokenizer: &TextTokenizer, user: &str) -> Result<EncodedPrompt> {
        let (text, add_special_tokens) = match &self.template {
            TemplateChoice::Raw => (user.to_owned(), true),
            TemplateChoice::Builtin(builtin) => (
                builtin.render(self.system.as_deref(), user),
                !builtin.text_has_bos(),
            ),
            TemplateChoice::Model => {
                let source = tokenizer.chat_template().ok_or_else(|| {
                    ModelError::ChatTemplate(format!(
                        "the tokenizer in {} has no chat_template; choose a built-in template ({})",
                        tokenizer.path.display(),
                        Builtin::ALL.map(Builtin::name).join(", ")
                    ))
                })?;
                let mut messages = Vec::with_capacity(2);
                if let Some(system) = &self.system {
                    messages.push(Message::new("system", system));
                }
                messages.push(Message::new("user", user));
                (
                    chat::render_jinja(source, &messages, true, tokenizer.special_tokens())?,
                    false,
                )
            }
        };
        let input_ids = tokenizer.encode(&text, add_special_tokens)?;
        Ok(EncodedPrompt { text, input_ids })
    }
}
