//! Logit-lens records: each stored state's top-k next tokens under
//! `lm_head(final_norm(h))`, written as `lens/part-SSSSS.parquet`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use ihs_model::{CausalLm, TextTokenizer};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tch::{Kind, Tensor};

/// Lens rows in column form.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LensRecords {
    pub prompt_ids: Vec<String>,
    pub classes: Vec<String>,
    pub layers: Vec<i32>,
    pub ranks: Vec<i32>,
    pub token_ids: Vec<u32>,
    /// The vocabulary string of each token (with its word-start marker).
    pub tokens: Vec<String>,
    /// The decoded text of each token.
    pub texts: Vec<String>,
    pub logits: Vec<f32>,
    /// Softmax over the whole vocabulary.
    pub probs: Vec<f32>,
}

impl LensRecords {
    #[must_use]
    pub fn len(&self) -> usize {
        self.prompt_ids.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.prompt_ids.is_empty()
    }

    /// Appends `other` after these records.
    pub fn extend(&mut self, other: Self) {
        self.prompt_ids.extend(other.prompt_ids);
        self.classes.extend(other.classes);
        self.layers.extend(other.layers);
        self.ranks.extend(other.ranks);
        self.token_ids.extend(other.token_ids);
        self.tokens.extend(other.tokens);
        self.texts.extend(other.texts);
        self.logits.extend(other.logits);
        self.probs.extend(other.probs);
    }

    /// Writes the records to one Parquet file.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("prompt_id", DataType::Utf8, false),
            Field::new("class", DataType::Utf8, false),
            Field::new("layer", DataType::Int32, false),
            Field::new("rank", DataType::Int32, false),
            Field::new("token_id", DataType::UInt32, false),
            Field::new("token", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("logit", DataType::Float32, false),
            Field::new("prob", DataType::Float32, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.prompt_ids.clone())),
            Arc::new(StringArray::from(self.classes.clone())),
            Arc::new(Int32Array::from(self.layers.clone())),
            Arc::new(Int32Array::from(self.ranks.clone())),
            Arc::new(UInt32Array::from(self.token_ids.clone())),
            Arc::new(StringArray::from(self.tokens.clone())),
            Arc::new(StringArray::from(self.texts.clone())),
            Arc::new(Float32Array::from(self.logits.clone())),
            Arc::new(Float32Array::from(self.probs.clone())),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
        let file =
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
            ))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema, Some(properties)).map_err(|e| e.to_string())?;
        writer.write(&batch).map_err(|e| e.to_string())?;
        let file = writer.into_inner().map_err(|e| e.to_string())?;
        file.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", path.display()))
    }
}

/// Reads `states` (`[layers, batch, hidden]`, one per stored layer) through the
/// logit lens and returns the top `k` tokens of each layer and prompt.
pub fn lens_records(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    states: &Tensor,
    layers: &[usize],
    prompts: &[(&str, &str)],
    k: usize,
) -> Result<LensRecords, String> {
    let logits = model.logit_lens(states).map_err(|e| e.to_string())?;
    let probs = logits.softmax(-1, Kind::Float);
    let (top_logits, top_ids) = logits.topk(k as i64, -1, true, true);
    let top_probs = probs.gather(-1, &top_ids, false);
    let to_string = |e: tch::TchError| e.to_string();
    let top_logits: Vec<f32> = Vec::try_from(top_logits.flatten(0, -1)).map_err(to_string)?;
    let top_ids: Vec<i64> = Vec::try_from(top_ids.flatten(0, -1)).map_err(to_string)?;
    let top_probs: Vec<f32> = Vec::try_from(top_probs.flatten(0, -1)).map_err(to_string)?;

    let mut records = LensRecords::default();
    let mut flat = 0;
    for &layer in layers {
        for &(prompt_id, class) in prompts {
            for rank in 0..k {
                let id = top_ids[flat] as u32;
                records.prompt_ids.push(prompt_id.to_owned());
                records.classes.push(class.to_owned());
                records.layers.push(layer as i32);
                records.ranks.push(rank as i32);
                records.token_ids.push(id);
                records
                    .tokens
                    .push(tokenizer.id_to_token(id).unwrap_or_default());
                records
                    .texts
                    .push(tokenizer.decode(&[id], false).unwrap_or_default());
                records.logits.push(top_logits[flat]);
                records.probs.push(top_probs[flat]);
                flat += 1;
            }
        }
    }
    Ok(records)
}
