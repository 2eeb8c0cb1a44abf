//! Token ids and chat templates against HF transformers and `FastChat`.
//!
//! The references were recorded by `scripts/make_parity_fixtures.py`: token ids
//! from `PreTrainedTokenizerFast`, rendered prompts from
//! `apply_chat_template`, and built-in formats from `FastChat`'s
//! `Conversation.get_prompt()`.

mod common;

use common::{family_dir, fixture_root, Reference, FAMILIES};
use ihs_model::chat::{render_jinja, Builtin, Message};
use ihs_model::{PromptFormat, TemplateChoice, TextTokenizer};
use serde_json::Value;

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn token_ids_match_hf() {
    for family in FAMILIES {
        let tokenizer = TextTokenizer::from_dir(&family_dir(family)).unwrap();
        let reference = Reference::load(family);
        for case in reference.json["tokenizer_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                ids(&case["with_special"]),
                "{family}: {text:?} with special tokens"
            );
            assert_eq!(
                tokenizer.encode(text, false).unwrap(),
                ids(&case["without_special"]),
                "{family}: {text:?} without special tokens"
            );
        }
    }
}

#[test]
fn chat_templates_match_hf_byte_for_byte() {
    let mut checked = 0;
    for family in FAMILIES {
        let tokenizer = TextTokenizer::from_dir(&family_dir(family)).unwrap();
        let reference = Reference::load(family);
        for case in reference.json["templates"].as_array().unwrap() {
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let rendered = render_jinja(
                tokenizer.chat_template().expect("family has a template"),
                &messages,
                case["add_generation_prompt"].as_bool().unwrap(),
                tokenizer.special_tokens(),
            )
            .unwrap();
            assert_eq!(
                rendered,
                case["rendered"].as_str().unwrap(),
                "{family}: {messages:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} template cases were checked");
}

#[test]
fn prompt_ids_match_hf() {
    for family in FAMILIES {
        let tokenizer = TextTokenizer::from_dir(&family_dir(family)).unwrap();
        let reference = Reference::load(family);
        for (index, prompt) in reference.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let has_template = tokenizer.chat_template().is_some();
            let format = PromptFormat {
                template: if has_template {
                    TemplateChoice::Model
                } else {
                    TemplateChoice::Raw
                },
                system: prompt["system"]
                    .as_bool()
                    .unwrap()
                    .then(|| "You are a helpful and harmless assistant".to_owned()),
            };
            let encoded = format
                .encode(&tokenizer, prompt["text"].as_str().unwrap())
                .unwrap();
            assert_eq!(
                encoded.text,
                prompt["rendered"].as_str().unwrap(),
                "{family} prompt {index}"
            );
            assert_eq!(
                encoded.input_ids,
                reference.input_ids(index),
                "{family} prompt {index}"
            );
        }
    }
}

#[test]
fn builtin_templates_match_fastchat() {
    let text = std::fs::read_to_string(fixture_root().join("fastchat.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let builtin = Builtin::from_name(case["template"].as_str().unwrap()).unwrap();
        let system = case["system"].as_str();
        let user = case["text"].as_str().unwrap();
        assert_eq!(
            builtin.render(system, user),
            case["rendered"].as_str().unwrap(),
            "{} with system {system:?}",
            builtin.name()
        );
    }
    assert_eq!(
        cases.len(),
        5 * 4 * 3,
        "every format, prompt and system choice is covered"
    );
}

#[test]
fn missing_model_template_names_builtins() {
    let tokenizer = TextTokenizer::from_dir(&family_dir("vicuna")).unwrap();
    let format = PromptFormat {
        template: TemplateChoice::Model,
        system: None,
    };
    let message = format.encode(&tokenizer, "hello").unwrap_err().to_string();
    assert!(message.contains("no chat_template"), "{message}");
    assert!(message.contains("vicuna_v1.1"), "{message}");
}

#[test]
fn builtin_llama3_is_encoded_without_a_second_bos() {
    let tokenizer = TextTokenizer::from_dir(&family_dir("llama3")).unwrap();
    let format = PromptFormat {
        template: TemplateChoice::parse("llama-3").unwrap(),
        system: None,
    };
    let encoded = format.encode(&tokenizer, "hello").unwrap();
    let bos = tokenizer.token_to_id("<|begin_of_text|>").unwrap();
    assert_eq!(encoded.input_ids.iter().filter(|&&id| id == bos).count(), 1);
    assert_eq!(encoded.input_ids[0], bos);
}
