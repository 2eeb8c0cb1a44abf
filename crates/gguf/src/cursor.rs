//! Bounds-checked little-endian reads from the bytes of a GGUF file.
//!
//! Every read names the field it reads, so the error for a truncated or corrupt file
//! names the field that failed and its byte offset.

use std::fmt;

use crate::error::GgufError;

/// Maximum number of elements reserved before they are read. For a count that passed
/// [`Cursor::read_count`], the memory can still be several times the file size once
/// each entry becomes a `String` or a struct, so larger collections grow as entries
/// are read.
pub(crate) const MAX_PREALLOCATED: usize = 1 << 16;

/// A read position in a byte slice.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Byte offset of the next read from the start of the file.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Number of bytes after the read position.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Takes the next `len` bytes, or fails with [`GgufError::Truncated`] naming `what`.
    pub(crate) fn take(
        &mut self,
        len: usize,
        what: &dyn fmt::Display,
    ) -> Result<&'a [u8], GgufError> {
        if len > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: len as u64,
                available: self.remaining() as u64,
            });
        }
        let taken = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }

    fn take_array<const N: usize>(
        &mut self,
        what: &dyn fmt::Display,
    ) -> Result<[u8; N], GgufError> {
        let taken = self.take(N, what)?;
        let mut array = [0u8; N];
        array.copy_from_slice(taken);
        Ok(array)
    }

    pub(crate) fn read_u8(&mut self, what: &dyn fmt::Display) -> Result<u8, GgufError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    pub(crate) fn read_i8(&mut self, what: &dyn fmt::Display) -> Result<i8, GgufError> {
        Ok(i8::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_u16(&mut self, what: &dyn fmt::Display) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_i16(&mut self, what: &dyn fmt::Display) -> Result<i16, GgufError> {
        Ok(i16::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_u32(&mut self, what: &dyn fmt::Display) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_i32(&mut self, what: &dyn fmt::Display) -> Result<i32, GgufError> {
        Ok(i32::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_u64(&mut self, what: &dyn fmt::Display) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_i64(&mut self, what: &dyn fmt::Display) -> Result<i64, GgufError> {
        Ok(i64::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_f32(&mut self, what: &dyn fmt::Display) -> Result<f32, GgufError> {
        Ok(f32::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn read_f64(&mut self, what: &dyn fmt::Display) -> Result<f64, GgufError> {
        Ok(f64::from_le_bytes(self.take_array(what)?))
    }

    /// Reads a GGUF string: a u64 byte length followed by that many UTF-8 bytes.
    ///
    /// The length is checked against the remaining bytes before anything is allocated.
    pub(crate) fn read_string(&mut self, what: &dyn fmt::Display) -> Result<String, GgufError> {
        let length_offset = self.pos;
        let length = self.read_u64(&format_args!("length of {what}"))?;
        let len = match usize::try_from(length) {
            Ok(len) if len <= self.remaining() => len,
            _ => {
                return Err(GgufError::StringTooLong {
                    what: what.to_string(),
                    length,
                    offset: length_offset as u64,
                    available: self.remaining() as u64,
                })
            }
        };
        let text_offset = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what.to_string(),
                offset: text_offset as u64,
            }),
        }
    }

    /// Reads a u64 count of entries that each take at least `min_entry_bytes` bytes,
    /// and rejects a count that the rest of the file cannot hold.
    ///
    /// This bounds every allocation sized by a count to the size of the file.
    pub(crate) fn read_count(
        &mut self,
        min_entry_bytes: usize,
        what: &dyn fmt::Display,
    ) -> Result<usize, GgufError> {
        let count_offset = self.pos;
        let count = self.read_u64(what)?;
        let max = self.remaining() / min_entry_bytes;
        match usize::try_from(count) {
            Ok(count) if count <= max => Ok(count),
            _ => Err(GgufError::CountTooLarge {
                what: what.to_string(),
                count,
                offset: count_offset as u64,
                available: self.remaining() as u64,
                min_entry_bytes: min_entry_bytes as u64,
                max: max as u64,
            }),
        }
    }
}
