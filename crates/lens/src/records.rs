//! Logit-lens records: the top tokens of each stored state, as the extract
//! stage writes them to `lens/part-SSSSS.parquet` when `extract.lens.enabled`
//! is set. One row per prompt, residual-stream index and rank:
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `prompt_id` | Utf8 | |
//! | `class` | Utf8 | |
//! | `layer` | Int32 | residual-stream index, 0 (embeddings) to L |
//! | `rank` | Int32 | 0-based, by descending logit |
//! | `token_id` | UInt32 | |
//! | `token` | Utf8 | the vocabulary string, such as `Ġsure` |
//! | `text` | Utf8 | the decoded token, such as ` sure` |
//! | `logit` | Float32 | |
//! | `prob` | Float32 | softmax over the full vocabulary |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};

use crate::table::{self, column, TableError};

/// One logit-lens row.
#[derive(Debug, Clone, PartialEq)]
pub struct LensRecord {
    pub prompt_id: String,
    pub class: String,
    pub layer: i32,
    pub rank: i32,
    pub token_id: u32,
    pub token: String,
    pub text: String,
    pub logit: f32,
    pub prob: f32,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ])
}

/// Writes logit-lens records to one Parquet file.
pub fn write_lens_records(path: &Path, records: &[LensRecord]) -> Result<(), TableError> {
    let strings = |f: fn(&LensRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.prompt_id),
        strings(|r| &r.class),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|r| r.layer),
        )),
        Arc::new(Int32Array::from_iter_values(records.iter().map(|r| r.rank))),
        Arc::new(UInt32Array::from_iter_values(
            records.iter().map(|r| r.token_id),
        )),
        strings(|r| &r.token),
        strings(|r| &r.text),
        Arc::new(Float32Array::from_iter_values(
            records.iter().map(|r| r.logit),
        )),
        Arc::new(Float32Array::from_iter_values(
            records.iter().map(|r| r.prob),
        )),
    ];
    table::write_table(path, schema(), columns)
}

/// Logit-lens records that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no logit-lens records in {}: expected part-*.parquet files there; set `extract.lens.enabled: true` in the spec so that the extract stage writes them", dir.display())]
    Missing { dir: PathBuf },

    #[error("cannot list {}: {source}", dir.display())]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Table(#[from] TableError),

    #[error("{}: row {row}: {message}", path.display())]
    InvalidRow {
        path: PathBuf,
        row: usize,
        message: String,
    },
}

/// One row of a [`LensTable`], with its prompt as an index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LensRow {
    /// Index into [`LensTable::prompts`].
    pub prompt: usize,
    pub layer: usize,
    pub rank: usize,
    pub token_id: u32,
    pub logit: f32,
    pub prob: f32,
}

/// A prompt of a [`LensTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LensPrompt {
    pub prompt_id: String,
    pub class: String,
}

/// The records of a `lens/` folder with prompts and token strings stored
/// once, so that tens of layers for thousands of prompts fit in memory.
#[derive(Debug, Clone, Default)]
pub struct LensTable {
    /// Prompts in order of first appearance.
    pub prompts: Vec<LensPrompt>,
    pub rows: Vec<LensRow>,
    /// Token id to its vocabulary string and decoded text.
    pub tokens: BTreeMap<u32, (String, String)>,
    /// The largest rank found plus one: the top-k the records were written with.
    pub recorded_top_k: usize,
}

impl LensTable {
    /// Reads every `part-*.parquet` file of `dir`, keeping the rows for which
    /// `keep(layer, rank)` holds.
    pub fn read(dir: &Path, keep: impl Fn(usize, usize) -> bool) -> Result<Self, RecordError> {
        let files = match table::part_files(dir) {
            Ok(files) => files,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(RecordError::List {
                    dir: dir.to_owned(),
                    source,
                })
            }
        };
        if files.is_empty() {
            return Err(RecordError::Missing {
                dir: dir.to_owned(),
            });
        }
        let mut table = Self::default();
        let mut prompt_index: HashMap<String, usize> = HashMap::new();
        for file in &files {
            table.read_file(file, &keep, &mut prompt_index)?;
        }
        Ok(table)
    }

    fn read_file(
        &mut self,
        path: &Path,
        keep: &impl Fn(usize, usize) -> bool,
        prompt_index: &mut HashMap<String, usize>,
    ) -> Result<(), RecordError> {
        let mut row_offset = 0;
        for batch in table::read_batches(path)? {
            let prompt_ids: &StringArray = column(&batch, "prompt_id", "Utf8", path)?;
            let classes: &StringArray = column(&batch, "class", "Utf8", path)?;
            let layers: &Int32Array = column(&batch, "layer", "Int32", path)?;
            let ranks: &Int32Array = column(&batch, "rank", "Int32", path)?;
            let token_ids: &UInt32Array = column(&batch, "token_id", "UInt32", path)?;
            let tokens: &StringArray = column(&batch, "token", "Utf8", path)?;
            let texts: &StringArray = column(&batch, "text", "Utf8", path)?;
            let logits: &Float32Array = column(&batch, "logit", "Float32", path)?;
            let probs: &Float32Array = column(&batch, "prob", "Float32", path)?;

            for i in 0..batch.num_rows() {
                let invalid = |message: String| RecordError::InvalidRow {
                    path: path.to_owned(),
                    row: row_offset + i,
                    message,
                };
                let layer = usize::try_from(layers.value(i))
                    .map_err(|_| invalid(format!("negative layer {}", layers.value(i))))?;
                let rank = usize::try_from(ranks.value(i))
                    .map_err(|_| invalid(format!("negative rank {}", ranks.value(i))))?;
                self.recorded_top_k = self.recorded_top_k.max(rank + 1);
                if !keep(layer, rank) {
                    continue;
                }
                let prompt_id = prompt_ids.value(i);
                let class = classes.value(i);
                let prompt = if let Some(&index) = prompt_index.get(prompt_id) {
                    if self.prompts[index].class != class {
                        return Err(invalid(format!(
                            "prompt {prompt_id} has class {class} here and {} in an earlier row",
                            self.prompts[index].class
                        )));
                    }
                    index
                } else {
                    self.prompts.push(LensPrompt {
                        prompt_id: prompt_id.to_owned(),
                        class: class.to_owned(),
                    });
                    prompt_index.insert(prompt_id.to_owned(), self.prompts.len() - 1);
                    self.prompts.len() - 1
                };
                let token_id = token_ids.value(i);
                self.tokens
                    .entry(token_id)
                    .or_insert_with(|| (tokens.value(i).to_owned(), texts.value(i).to_owned()));
                self.rows.push(LensRow {
                    prompt,
                    layer,
                    rank,
                    token_id,
                    logit: logits.value(i),
                    prob: probs.value(i),
                });
            }
            row_offset += batch.num_rows();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt: &str, class: &str, layer: i32, rank: i32, id: u32) -> LensRecord {
        LensRecord {
            prompt_id: prompt.into(),
            class: class.into(),
            layer,
            rank,
            token_id: id,
            token: format!("\u{0120}t{id}"),
            text: format!(" t{id}"),
            logit: 2.0 - rank as f32,
            prob: 0.5 / (rank as f32 + 1.0),
        }
    }

    #[test]
    fn records_round_trip_with_filter() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![
            record("a", "normal", 0, 0, 5),
            record("a", "normal", 0, 1, 6),
            record("b", "malicious", 3, 0, 5),
            record("b", "malicious", 3, 1, 7),
        ];
        write_lens_records(&dir.path().join("part-00000.parquet"), &records).unwrap();
        write_lens_records(
            &dir.path().join("part-00001.parquet"),
            &[record("c", "normal", 1, 0, 8)],
        )
        .unwrap();

        let table = LensTable::read(dir.path(), |_, rank| rank < 1).unwrap();
        assert_eq!(table.recorded_top_k, 2);
        assert_eq!(table.rows.len(), 3);
        assert_eq!(
            table
                .prompts
                .iter()
                .map(|p| p.prompt_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(table.prompts[1].class, "malicious");
        assert_eq!(table.rows[1].layer, 3);
        assert_eq!(table.rows[1].prompt, 1);
        assert_eq!(table.rows[2].token_id, 8);
        assert_eq!(
            table.tokens[&5],
            ("\u{0120}t5".to_owned(), " t5".to_owned())
        );
        // Rank 1 rows were filtered out, so token 6 was never stored.
        assert!(!table.tokens.contains_key(&6));
    }

    #[test]
    fn missing_folder_asks_for_extract_lens() {
        let dir = tempfile::tempdir().unwrap();
        let message = LensTable::read(&dir.path().join("lens"), |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(message.contains("extract.lens.enabled: true"), "{message}");
    }

    #[test]
    fn class_change_of_a_prompt_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![
            record("a", "normal", 0, 0, 5),
            record("a", "malicious", 1, 0, 5),
        ];
        write_lens_records(&dir.path().join("part-00000.parquet"), &records).unwrap();
        let message = LensTable::read(dir.path(), |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(message.contains("row 1"), "{message}");
        assert!(message.contains("class malicious"), "{message}");
    }
}
