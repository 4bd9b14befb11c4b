//! The check of one message body against its writer schema, before arrow-avro decodes it.
//!
//! arrow-avro decodes straight into column builders and reports some faults only when the batch
//! is flushed: text that is not UTF-8 and enum indices out of range fail the whole batch there,
//! and a body that stops or errs halfway leaves a partial row behind. So every body is walked
//! once here first, without building anything; a body that passes decodes, and a bad one
//! becomes the failure of its own message while the rest of the batch goes on.
//!
//! The rules are arrow-avro's where it is strict and fastavro's (the reference) where arrow-avro
//! would accept more: a varint is at most 10 bytes and fits 64 bits (an `int` 32), lengths and
//! block sizes are not negative, a union branch or enum index is one the schema has, text is
//! UTF-8. A boolean byte other than 0 is true, as both read it. A field the reader skips is, as
//! fastavro skips it, not read as text or as a symbol; its shape is checked all the same.

use crate::schema::{Node, Schema};

/// Why a body does not match its writer schema.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// The body ends before its value does.
    Truncated,
    /// The body ends inside a field the reader skips (fastavro does not notice: it skips past
    /// the end).
    TruncatedInSkipped,
    /// The bytes cannot be a value of the schema; `at` is the offset in the body.
    Malformed { at: usize, reason: String },
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 200;
/// Most items of a zero-byte type (`null`, an empty record) one block may claim.
const MAX_EMPTY_ITEMS: u64 = 1 << 24;

/// Walk `body` as one value of `schema`; the number of bytes it takes.
pub fn check(schema: &Schema, body: &[u8]) -> Result<usize, BodyError> {
    let mut cursor = Cursor { schema, buf: body, pos: 0, lenient: false };
    if schema.skipped.iter().any(|&s| s) {
        let Node::Record(fields) = &schema.nodes[schema.root] else { unreachable!("skipped fields are a record's") };
        for (&field, &skipped) in fields.iter().zip(&schema.skipped) {
            cursor.lenient = skipped;
            match cursor.value(field, 1) {
                Err(BodyError::Truncated) if skipped => return Err(BodyError::TruncatedInSkipped),
                Err(BodyError::Malformed { at, reason }) if skipped => {
                    return Err(BodyError::Malformed { at, reason: format!("{reason}, in a field the reader skips") });
                }
                outcome => outcome?,
            }
        }
    } else {
        cursor.value(schema.root, 0)?;
    }
    Ok(cursor.pos)
}

struct Cursor<'a> {
    schema: &'a Schema,
    buf: &'a [u8],
    pos: usize,
    /// In a field the reader skips: text need not be UTF-8, nor an enum index a symbol's.
    lenient: bool,
}

impl Cursor<'_> {
    fn malformed<T>(&self, at: usize, reason: String) -> Result<T, BodyError> {
        Err(BodyError::Malformed { at, reason })
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, BodyError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.long_varint(),
        }
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, BodyError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(BodyError::Truncated);
            };
            self.pos += 1;
            if i == 9 {
                // The 10th byte holds the 64th bit only.
                if byte >= 2 {
                    return self.malformed(start, "varint longer than 64 bits".into());
                }
                return Ok(value | (u64::from(byte) << 63));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        unreachable!("the loop returns by its 10th byte")
    }

    #[inline(always)]
    fn long(&mut self) -> Result<i64, BodyError> {
        let raw = self.varint()?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    #[inline(always)]
    fn int(&mut self) -> Result<i32, BodyError> {
        let start = self.pos;
        let raw = self.varint()?;
        let Ok(raw) = u32::try_from(raw) else {
            return self.malformed(start, format!("int out of the 32-bit range (varint {raw})"));
        };
        Ok((raw >> 1) as i32 ^ -((raw & 1) as i32))
    }

    #[inline(always)]
    fn skip(&mut self, n: usize) -> Result<&[u8], BodyError> {
        if self.buf.len() - self.pos < n {
            return Err(BodyError::Truncated);
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&[u8], BodyError> {
        let start = self.pos;
        let len = self.long()?;
        let Ok(len) = usize::try_from(len) else {
            return self.malformed(start, format!("negative length {len}"));
        };
        self.skip(len)
    }

    #[inline(always)]
    fn string(&mut self) -> Result<(), BodyError> {
        let start = self.pos;
        let lenient = self.lenient;
        let bytes = self.bytes()?;
        if lenient {
            return Ok(());
        }
        // Most text is ASCII; std's check has a fixed cost that dominates on short strings.
        if bytes.is_ascii() {
            return Ok(());
        }
        if let Err(e) = std::str::from_utf8(bytes) {
            return self.malformed(start, format!("string is not UTF-8 ({e})"));
        }
        Ok(())
    }

    fn value(&mut self, node: usize, depth: usize) -> Result<(), BodyError> {
        if depth > MAX_DEPTH {
            return self.malformed(self.pos, format!("values nested more than {MAX_DEPTH} deep"));
        }
        let schema = self.schema;
        match &schema.nodes[node] {
            Node::Null => {}
            Node::Boolean => {
                self.skip(1)?;
            }
            Node::Int => {
                self.int()?;
            }
            Node::Long => {
                self.long()?;
            }
            Node::Float => {
                self.skip(4)?;
            }
            Node::Double => {
                self.skip(8)?;
            }
            Node::Bytes => {
                self.bytes()?;
            }
            Node::String => self.string()?,
            Node::Fixed(n) => {
                self.skip(*n)?;
            }
            Node::Enum(symbols) => {
                let start = self.pos;
                let index = self.int()?;
                if !self.lenient && usize::try_from(index).map_or(true, |i| i >= *symbols) {
                    return self.malformed(start, format!("enum symbol index {index}, the enum has {symbols}"));
                }
            }
            Node::Union(branches) => {
                let start = self.pos;
                let branch = self.long()?;
                let Some(&chosen) = usize::try_from(branch).ok().and_then(|b| branches.get(b)) else {
                    return self.malformed(start, format!("union branch {branch}, the union has {}", branches.len()));
                };
                self.value(chosen, depth + 1)?;
            }
            Node::Record(fields) => {
                for &field in fields {
                    // The common fields inline; only nested values recurse.
                    match &schema.nodes[field] {
                        Node::String => self.string()?,
                        Node::Long => {
                            self.long()?;
                        }
                        Node::Double => {
                            self.skip(8)?;
                        }
                        _ => self.value(field, depth + 1)?,
                    }
                }
            }
            Node::Array(items) => self.blocks(&[*items], depth)?,
            Node::Map(values) => self.blocks(&[usize::MAX, *values], depth)?,
        }
        Ok(())
    }

    /// The blocks of an array (`parts` = the item) or a map (a string key, then the value).
    fn blocks(&mut self, parts: &[usize], depth: usize) -> Result<(), BodyError> {
        let schema = self.schema;
        let item_size: usize = parts.iter().map(|&p| if p == usize::MAX { 1 } else { schema.min_size[p] }).sum();
        let mut total: u64 = 0;
        loop {
            let start = self.pos;
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = self.long()?;
                if size < 0 {
                    return self.malformed(start, format!("negative block size {size}"));
                }
            }
            let count = count.unsigned_abs();
            total += count;
            if total > i32::MAX as u64 {
                return self.malformed(start, format!("{total} items, more than an Arrow list holds"));
            }
            let left = (self.buf.len() - self.pos) as u64;
            if item_size > 0 && count > left / item_size as u64 {
                return Err(BodyError::Truncated);
            }
            if item_size == 0 && count > MAX_EMPTY_ITEMS {
                return self.malformed(start, format!("a block of {count} zero-byte items"));
            }
            for _ in 0..count {
                for &part in parts {
                    if part == usize::MAX {
                        self.string()?;
                    } else {
                        self.value(part, depth + 1)?;
                    }
                }
            }
        }
    }
}
