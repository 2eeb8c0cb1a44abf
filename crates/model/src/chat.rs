//! Chat templates: a model's own Jinja `chat_template`, rendered as HF
//! transformers' `apply_chat_template` renders it, and built-in conversation
//! formats that reproduce `FastChat`'s `get_prompt()` for models without one.

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::error::{ModelError, Result};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    #[must_use]
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// The special-token strings a template may use (`bos_token`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// Conversation formats built in, named as `FastChat` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]`
    Llama2,
    /// Header tokens around each role, `<|eot_id|>` after each turn.
    Llama3,
    /// `{system} USER: {user} ASSISTANT:`
    VicunaV11,
    /// `[INST] {system}\n{user} [/INST]`
    Mistral,
    /// `{system}User: {user}\n\nAssistant:`
    Falcon,
}

const VICUNA_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

impl Builtin {
    pub const ALL: [Self; 5] = [
        Self::Llama2,
        Self::Llama3,
        Self::VicunaV11,
        Self::Mistral,
        Self::Falcon,
    ];

    /// Looks a format up by its `FastChat` name (`llama-2`, `vicuna_v1.1`, ...).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| ModelError::UnknownTemplate {
                found: name.to_owned(),
                supported: Self::ALL.map(Self::name).join(", "),
            })
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama2 => "llama-2",
            Self::Llama3 => "llama-3",
            Self::VicunaV11 => "vicuna_v1.1",
            Self::Mistral => "mistral",
            Self::Falcon => "falcon",
        }
    }

    /// Returns the system message used when none is given.
    #[must_use]
    pub fn default_system(self) -> &'static str {
        match self {
            Self::VicunaV11 => VICUNA_SYSTEM,
            _ => "",
        }
    }

    /// Returns whether the rendered text already contains the BOS token. `FastChat`
    /// writes `<|begin_of_text|>` into Llama-3 prompts, so those are tokenized
    /// without adding special tokens; the others get the tokenizer's BOS.
    #[must_use]
    pub fn text_has_bos(self) -> bool {
        matches!(self, Self::Llama3)
    }

    /// Renders one user turn followed by the assistant's generation prompt,
    /// byte for byte as `FastChat` does. Its quirks are kept: an empty user
    /// message renders as the bare role tag, and the Falcon format joins a
    /// system message to `User:` without a separator.
    #[must_use]
    pub fn render(self, system: Option<&str>, user: &str) -> String {
        let system = system.unwrap_or(self.default_system());
        let mut out = String::new();
        match self {
            Self::Llama2 | Self::Mistral => {
                if system.is_empty() {
                    out.push_str("[INST] ");
                } else if self == Self::Llama2 {
                    let _ = write!(out, "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n");
                } else {
                    let _ = writeln!(out, "[INST] {system}");
                }
                if user.is_empty() {
                    out.push_str("[INST]");
                } else {
                    out.push_str(user);
                    out.push(' ');
                }
                out.push_str("[/INST]");
            }
            Self::Llama3 => {
                out.push_str("<|begin_of_text|>");
                if !system.is_empty() {
                    let _ = write!(
                        out,
                        "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
                    );
                }
                out.push_str("<|start_header_id|>user<|end_header_id|>\n\n");
                if !user.is_empty() {
                    let _ = write!(out, "{}<|eot_id|>", python_strip(user));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            Self::VicunaV11 => {
                out.push_str(system);
                out.push(' ');
                if user.is_empty() {
                    out.push_str("USER:");
                } else {
                    let _ = write!(out, "USER: {user} ");
                }
                out.push_str("ASSISTANT:");
            }
            Self::Falcon => {
                out.push_str(system);
                if user.is_empty() {
                    out.push_str("User:");
                } else {
                    let flattened = user.replace("\r\n", "\n").replace("\n\n", "\n");
                    let _ = write!(out, "User: {flattened}\n\n");
                }
                out.push_str("Assistant:");
            }
        }
        out
    }
}

/// Strips what Python's `str.strip()` strips: Unicode whitespace plus the
/// ASCII separators U+001C..U+001F.
fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Renders a Jinja chat template with the settings HF transformers uses:
/// `trim_blocks`, `lstrip_blocks`, loop controls, Python string methods,
/// `raise_exception`, `strftime_now` and a `tojson` that writes JSON as
/// Python's `json.dumps` does.
pub fn render_jinja(
    source: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    special: &SpecialTokens,
) -> Result<String> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| ModelError::ChatTemplate(format!("invalid syntax settings: {e}")))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| -> String {
        chrono::Local::now().format(&format).to_string()
    });
    env.add_filter("tojson", tojson);
    env.add_template("chat_template", source)
        .map_err(|e| ModelError::ChatTemplate(format!("the template does not parse: {e:#}")))?;

    let context = minijinja::context! {
        messages => Value::from(minijinja::value::Serde(messages)),
        add_generation_prompt => add_generation_prompt,
        bos_token => special.bos.clone().unwrap_or_default(),
        eos_token => special.eos.clone().unwrap_or_default(),
        unk_token => special.unk.clone().unwrap_or_default(),
        pad_token => special.pad.clone().unwrap_or_default(),
        tools => Value::from(()),
        documents => Value::from(()),
    };
    env.get_template("chat_template")
        .and_then(|template| template.render(context))
        .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e:#}")))
}

/// `tojson(indent=None)` as transformers defines it: `json.dumps` with
/// `ensure_ascii=False`, so separators are `", "` and `": "` without an indent.
fn tojson(value: &Value, indent: Option<usize>) -> Result<Value, JinjaError> {
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    depth: usize,
) -> Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(text)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(out, &Value::from(key.to_string()), indent, depth + 1)?;
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a value of kind {:?}", value.kind()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_reaches_the_caller() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}";
        let message = render_jinja(
            source,
            &[Message::new("assistant", "x")],
            false,
            &SpecialTokens::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("roles must start with user"), "{message}");
    }

    #[test]
    fn python_string_methods_work() {
        let source = "{{ messages[0]['content'].strip().upper() }}";
        let text = render_jinja(
            source,
            &[Message::new("user", "  hi ")],
            false,
            &SpecialTokens::default(),
        )
        .unwrap();
        assert_eq!(text, "HI");
    }

    #[test]
    fn tojson_writes_python_separators() {
        let source = "{{ messages[0] | tojson }}";
        let text = render_jinja(
            source,
            &[Message::new("user", "é\"")],
            false,
            &SpecialTokens::default(),
        )
        .unwrap();
        assert_eq!(text, r#"{"role": "user", "content": "é\""}"#);
    }

    #[test]
    fn unknown_builtin_lists_names() {
        let message = Builtin::from_name("alpaca").unwrap_err().to_string();
        assert!(message.contains("vicuna_v1.1"), "{message}");
    }

    #[test]
    fn invalid_template_is_an_error() {
        let message = render_jinja("{% for %}", &[], false, &SpecialTokens::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("does not parse"), "{message}");
    }
}
