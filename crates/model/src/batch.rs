//! Padded batches of token sequences: input ids, attention mask, position ids
//! derived from the mask, and the indices of each prompt's real tokens.

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// The side of a shorter sequence that receives the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    #[default]
    Left,
    Right,
}

/// A batch of token sequences padded to one length.
///
/// Position ids count real tokens only (`cumsum(mask) - 1`), so a prompt's
/// hidden states do not depend on how much padding its batch needed.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64 token ids; padding slots hold `pad_id`.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch, seq]` int64 position ids.
    pub position_ids: Tensor,
    lengths: Vec<usize>,
    seq_len: usize,
    side: PaddingSide,
}

impl Batch {
    /// Pads `sequences` on `side` with `pad_id` and builds mask and positions on CPU.
    pub fn new(sequences: &[Vec<u32>], side: PaddingSide, pad_id: u32) -> Result<Self> {
        if sequences.is_empty() {
            return Err(ModelError::Request("the batch has no sequences".into()));
        }
        if let Some(index) = sequences.iter().position(Vec::is_empty) {
            return Err(ModelError::Request(format!(
                "sequence {index} of the batch has no tokens"
            )));
        }

        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let seq_len = lengths.iter().copied().max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq_len);
        let mut mask = Vec::with_capacity(sequences.len() * seq_len);
        let mut positions = Vec::with_capacity(sequences.len() * seq_len);
        for sequence in sequences {
            let pad = seq_len - sequence.len();
            let real = sequence.iter().map(|&t| i64::from(t));
            let padding = std::iter::repeat_n(i64::from(pad_id), pad);
            match side {
                PaddingSide::Left => {
                    ids.extend(padding.chain(real));
                    mask.extend(
                        std::iter::repeat_n(0_i64, pad)
                            .chain(std::iter::repeat_n(1, sequence.len())),
                    );
                    positions
                        .extend(std::iter::repeat_n(0_i64, pad).chain(0..sequence.len() as i64));
                }
                PaddingSide::Right => {
                    ids.extend(real.chain(padding));
                    mask.extend(
                        std::iter::repeat_n(1_i64, sequence.len())
                            .chain(std::iter::repeat_n(0, pad)),
                    );
                    positions.extend((0..sequence.len() as i64).chain(std::iter::repeat_n(0, pad)));
                }
            }
        }

        let shape = [sequences.len() as i64, seq_len as i64];
        Ok(Self {
            input_ids: Tensor::from_slice(&ids).view(shape),
            attention_mask: Tensor::from_slice(&mask).view(shape),
            position_ids: Tensor::from_slice(&positions).view(shape),
            lengths,
            seq_len,
            side,
        })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Returns the padded length of every row.
    #[must_use]
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Returns the number of real tokens of each row.
    #[must_use]
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    #[must_use]
    pub fn side(&self) -> PaddingSide {
        self.side
    }

    /// Returns the padded index of row `row`'s token number `token` (0-based
    /// among its real tokens).
    #[must_use]
    pub fn index_of(&self, row: usize, token: usize) -> usize {
        match self.side {
            PaddingSide::Left => self.seq_len - self.lengths[row] + token,
            PaddingSide::Right => token,
        }
    }

    /// Returns the padded index of each row's last real token.
    #[must_use]
    pub fn last_indices(&self) -> Vec<i64> {
        (0..self.len())
            .map(|row| self.index_of(row, self.lengths[row] - 1) as i64)
            .collect()
    }

    /// Builds the `[batch, 1, seq, seq]` boolean attention mask: causal, with
    /// no attention to padding keys. The diagonal is always allowed so that no
    /// padding row is fully masked. A fully masked row gives NaN in softmax,
    /// and that NaN would reach real rows through the next layer's values.
    #[must_use]
    pub fn attention_mask_4d(&self, device: Device, window: Option<usize>) -> Tensor {
        let t = self.seq_len as i64;
        let rows = Tensor::arange(t, (Kind::Int64, device)).view([t, 1]);
        let cols = Tensor::arange(t, (Kind::Int64, device)).view([1, t]);
        let mut allowed = cols.le_tensor(&rows);
        if let Some(window) = window {
            allowed = allowed.logical_and(&(&rows - &cols).lt(window as i64));
        }
        let keys = self
            .attention_mask
            .to_device(device)
            .to_kind(Kind::Bool)
            .view([self.len() as i64, 1, 1, t]);
        let diagonal = rows.eq_tensor(&cols);
        allowed
            .view([1, 1, t, t])
            .logical_and(&keys)
            .logical_or(&diagonal.view([1, 1, t, t]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn left_padding_positions_count_real_tokens() {
        let batch = Batch::new(&[vec![5, 6, 7], vec![8]], PaddingSide::Left, 0).unwrap();
        assert_eq!(values(&batch.input_ids), vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(values(&batch.attention_mask), vec![1, 1, 1, 0, 0, 1]);
        assert_eq!(values(&batch.position_ids), vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(batch.last_indices(), vec![2, 2]);
    }

    #[test]
    fn right_padding_last_indices() {
        let batch = Batch::new(&[vec![5, 6, 7], vec![8]], PaddingSide::Right, 9).unwrap();
        assert_eq!(values(&batch.input_ids), vec![5, 6, 7, 8, 9, 9]);
        assert_eq!(batch.last_indices(), vec![2, 0]);
    }

    #[test]
    fn mask_hides_padding_keys_and_future() {
        let batch = Batch::new(&[vec![1, 2], vec![3]], PaddingSide::Left, 0).unwrap();
        let mask = batch
            .attention_mask_4d(Device::Cpu, None)
            .to_kind(Kind::Int64);
        // Row 1 is [pad, 3]: its real query attends to itself only; the
        // padding query keeps its diagonal.
        assert_eq!(values(&mask.get(1)), vec![1, 0, 0, 1]);
        assert_eq!(values(&mask.get(0)), vec![1, 0, 1, 1]);
    }

    #[test]
    fn sliding_window_limits_keys() {
        let batch = Batch::new(&[vec![1, 2, 3]], PaddingSide::Left, 0).unwrap();
        let mask = batch
            .attention_mask_4d(Device::Cpu, Some(2))
            .to_kind(Kind::Int64);
        assert_eq!(values(&mask), vec![1, 0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn empty_sequence_is_rejected() {
        let message = Batch::new(&[vec![1], vec![]], PaddingSide::Left, 0)
            .unwrap_err()
            .to_string();
        assert!(message.contains("sequence 1"), "{message}");
    }
}
