//! GGUF metadata values and their parsing.
//!
//! Arrays are stored as one typed `Vec` per array instead of one enum per element,
//! so the memory that a parsed array takes stays within a small factor of the bytes
//! it occupies in the file.

use std::fmt;

use crate::cursor::{Cursor, MAX_PREALLOCATED};
use crate::error::GgufError;

/// Deepest nesting of arrays inside arrays that the parser accepts. The limit keeps a
/// crafted file from overflowing the stack through recursion. The value 16 is an
/// arbitrary bound, far above the arrays of arrays found in practice.
pub const MAX_ARRAY_DEPTH: usize = 16;

/// GGUF metadata value type ids, as written before each value.
mod type_id {
    pub(super) const U8: u32 = 0;
    pub(super) const I8: u32 = 1;
    pub(super) const U16: u32 = 2;
    pub(super) const I16: u32 = 3;
    pub(super) const U32: u32 = 4;
    pub(super) const I32: u32 = 5;
    pub(super) const F32: u32 = 6;
    pub(super) const BOOL: u32 = 7;
    pub(super) const STRING: u32 = 8;
    pub(super) const ARRAY: u32 = 9;
    pub(super) const U64: u32 = 10;
    pub(super) const I64: u32 = 11;
    pub(super) const F64: u32 = 12;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetadataArray),
}

/// A metadata array. GGUF arrays are homogeneous, and arrays may contain arrays.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetadataArray>),
}

impl MetadataValue {
    /// Returns the GGUF name of the value's type, such as `u32` or `array of string`, for messages.
    #[must_use]
    pub fn type_name(&self) -> String {
        match self {
            Self::Array(array) => array.type_name(),
            scalar => scalar.scalar_type_name().to_owned(),
        }
    }

    fn scalar_type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// Returns the value as an unsigned integer if it is an integer of any width and sign
    /// that is not negative.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(value) => Some(value.into()),
            Self::U16(value) => Some(value.into()),
            Self::U32(value) => Some(value.into()),
            Self::U64(value) => Some(value),
            Self::I8(value) => u64::try_from(value).ok(),
            Self::I16(value) => u64::try_from(value).ok(),
            Self::I32(value) => u64::try_from(value).ok(),
            Self::I64(value) => u64::try_from(value).ok(),
            _ => None,
        }
    }

    /// Returns the value as a signed integer if it is an integer of any width and sign
    /// that fits in an `i64`.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(value) => Some(value.into()),
            Self::I16(value) => Some(value.into()),
            Self::I32(value) => Some(value.into()),
            Self::I64(value) => Some(value),
            Self::U8(value) => Some(value.into()),
            Self::U16(value) => Some(value.into()),
            Self::U32(value) => Some(value.into()),
            Self::U64(value) => i64::try_from(value).ok(),
            _ => None,
        }
    }

    /// Returns the value as an `f64` if it is an `f32` or `f64`. The conversion from
    /// `f32` is exact.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(value) => Some(value.into()),
            Self::F64(value) => Some(value),
            _ => None,
        }
    }

    /// Returns the value as a string slice if it is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(text) => Some(text),
            _ => None,
        }
    }

    /// Returns the value as an array if it is one.
    #[must_use]
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            Self::Array(array) => Some(array),
            _ => None,
        }
    }
}

impl MetadataArray {
    /// Returns the number of elements in the array (not counting elements of nested arrays).
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::U8(values) => values.len(),
            Self::I8(values) => values.len(),
            Self::U16(values) => values.len(),
            Self::I16(values) => values.len(),
            Self::U32(values) => values.len(),
            Self::I32(values) => values.len(),
            Self::U64(values) => values.len(),
            Self::I64(values) => values.len(),
            Self::F32(values) => values.len(),
            Self::F64(values) => values.len(),
            Self::Bool(values) => values.len(),
            Self::String(values) => values.len(),
            Self::Array(values) => values.len(),
        }
    }

    /// Returns whether the array has no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the GGUF name of the array's type, such as `array of f32` or `array of array`.
    #[must_use]
    pub fn type_name(&self) -> String {
        let element = match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        };
        format!("array of {element}")
    }
}

/// Names one field of a metadata entry in error messages, such as
/// `value of metadata key "general.name"`.
struct KeyField<'a> {
    field: &'static str,
    key: &'a str,
}

impl fmt::Display for KeyField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of metadata key {:?}", self.field, self.key)
    }
}

/// Reads the value type id and the value of the metadata entry `key`.
pub(crate) fn read_value(cursor: &mut Cursor<'_>, key: &str) -> Result<MetadataValue, GgufError> {
    let type_offset = cursor.position();
    let value_type = cursor.read_u32(&format_args!("value type of metadata key {key:?}"))?;
    let what = &KeyField {
        field: "value",
        key,
    };
    let value = match value_type {
        type_id::U8 => MetadataValue::U8(cursor.read_u8(what)?),
        type_id::I8 => MetadataValue::I8(cursor.read_i8(what)?),
        type_id::U16 => MetadataValue::U16(cursor.read_u16(what)?),
        type_id::I16 => MetadataValue::I16(cursor.read_i16(what)?),
        type_id::U32 => MetadataValue::U32(cursor.read_u32(what)?),
        type_id::I32 => MetadataValue::I32(cursor.read_i32(what)?),
        type_id::U64 => MetadataValue::U64(cursor.read_u64(what)?),
        type_id::I64 => MetadataValue::I64(cursor.read_i64(what)?),
        type_id::F32 => MetadataValue::F32(cursor.read_f32(what)?),
        type_id::F64 => MetadataValue::F64(cursor.read_f64(what)?),
        type_id::BOOL => MetadataValue::Bool(read_bool(cursor, key)?),
        type_id::STRING => MetadataValue::String(cursor.read_string(what)?),
        type_id::ARRAY => MetadataValue::Array(read_array(cursor, key, 1)?),
        unknown => {
            return Err(GgufError::InvalidValueType {
                key: key.to_owned(),
                type_id: unknown,
                offset: type_offset as u64,
            })
        }
    };
    Ok(value)
}

fn read_bool(cursor: &mut Cursor<'_>, key: &str) -> Result<bool, GgufError> {
    let offset = cursor.position();
    match cursor.read_u8(&format_args!("bool value of metadata key {key:?}"))? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_owned(),
            value,
            offset: offset as u64,
        }),
    }
}

/// Reads an array's element type, length and elements. `depth` is 1 for an array
/// that is the value of a key, 2 for an array inside it, and so on.
fn read_array(
    cursor: &mut Cursor<'_>,
    key: &str,
    depth: usize,
) -> Result<MetadataArray, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayNestingTooDeep {
            key: key.to_owned(),
            max_depth: MAX_ARRAY_DEPTH,
        });
    }

    let type_offset = cursor.position();
    let element_type =
        cursor.read_u32(&format_args!("array element type of metadata key {key:?}"))?;
    // The smallest encoding of one element: a string is at least its u64 length and an
    // array at least its u32 element type and u64 length.
    let min_element_bytes = match element_type {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        type_id::ARRAY => 12,
        unknown => {
            return Err(GgufError::InvalidValueType {
                key: key.to_owned(),
                type_id: unknown,
                offset: type_offset as u64,
            })
        }
    };
    let len = cursor.read_count(
        min_element_bytes,
        &format_args!("array length of metadata key {key:?}"),
    )?;

    let what = &KeyField {
        field: "array element",
        key,
    };
    let array = match element_type {
        type_id::U8 => MetadataArray::U8(read_elements(len, || cursor.read_u8(what))?),
        type_id::I8 => MetadataArray::I8(read_elements(len, || cursor.read_i8(what))?),
        type_id::U16 => MetadataArray::U16(read_elements(len, || cursor.read_u16(what))?),
        type_id::I16 => MetadataArray::I16(read_elements(len, || cursor.read_i16(what))?),
        type_id::U32 => MetadataArray::U32(read_elements(len, || cursor.read_u32(what))?),
        type_id::I32 => MetadataArray::I32(read_elements(len, || cursor.read_i32(what))?),
        type_id::U64 => MetadataArray::U64(read_elements(len, || cursor.read_u64(what))?),
        type_id::I64 => MetadataArray::I64(read_elements(len, || cursor.read_i64(what))?),
        type_id::F32 => MetadataArray::F32(read_elements(len, || cursor.read_f32(what))?),
        type_id::F64 => MetadataArray::F64(read_elements(len, || cursor.read_f64(what))?),
        type_id::BOOL => MetadataArray::Bool(read_elements(len, || read_bool(cursor, key))?),
        type_id::STRING => MetadataArray::String(read_elements(len, || cursor.read_string(what))?),
        _ => MetadataArray::Array(read_elements(len, || read_array(cursor, key, depth + 1))?),
    };
    Ok(array)
}

/// Collects `len` elements. The caller has checked `len` against the remaining file size.
fn read_elements<T>(
    len: usize,
    mut read_one: impl FnMut() -> Result<T, GgufError>,
) -> Result<Vec<T>, GgufError> {
    let mut elements = Vec::with_capacity(len.min(MAX_PREALLOCATED));
    for _ in 0..len {
        elements.push(read_one()?);
    }
    Ok(elements)
}
