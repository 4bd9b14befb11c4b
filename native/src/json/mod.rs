//! JSON objects -> Avro bodies of the reader version, which the reader's own decoder then reads.
//!
//! A JSON message is checked against the reader schema while it is written as the Avro body a
//! producer of that version would have written, so its row comes out of the same arrow-avro
//! decoder, typed as an Avro row is, and no column is built twice. The rules, and the failure
//! messages word for word, are those of `connectors/kafka/jsonrecord.py` (the reference):
//!
//! - the value is one JSON object; a field of the reader is taken by its name; one left out
//!   takes its default, and is an error when it has none; a field no version of the event has
//!   is an error (a misspelt field would lose its value silently), one of another version is
//!   ignored, as Avro resolution skips a writer's field the reader lacks;
//! - `int` and `long` take a JSON integer in range (no fraction, no exponent); `float` and
//!   `double` any number; a `timestamp-millis` epoch milliseconds (an integer) or an RFC 3339
//!   string, which must carry its offset (`Z` or `+hh:mm`); a `uuid` string 8-4-4-4-12 hex
//!   digits; an enum symbol the schema lacks is read as the enum's default, and is an error
//!   when it has none; `bytes` and `fixed` a string of code points up to U+00FF (Avro's JSON);
//! - a union takes null in its null branch, other values in the first branch that takes them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::convert::is_uuid;

mod schema;
mod text;
pub mod value;

use schema::{Kind, Parser};
use text::parse_timestamp;
use text::show;
use value::Json;

/// The reader schema as JSON messages are checked and written against it.
pub struct JsonSchema {
    nodes: Vec<Kind>,
    root: usize,
    /// Top-level fields of other versions of the event, ignored in a message.
    ignored: HashSet<String>,
}

/// Nesting deeper than this is refused (serde_json itself stops at 128).
const MAX_DEPTH: usize = 200;

impl JsonSchema {
    /// Parse the reader schema, logical types included; `ignored`: see the field.
    pub fn parse(schema_json: &str, ignored: Vec<String>) -> Result<JsonSchema, String> {
        let value: serde_json::Value = serde_json::from_str(schema_json).map_err(|e| format!("not JSON: {e}"))?;
        let mut parser = Parser { nodes: Vec::new(), names: HashMap::new(), defaults: Vec::new() };
        let root = parser.node(&value, "")?;
        if !matches!(parser.nodes[root], Kind::Record(..)) {
            return Err("the reader schema is not a record".into());
        }
        let mut schema = JsonSchema { nodes: parser.nodes, root, ignored: ignored.into_iter().collect() };
        // Defaults are written once, here, with the rules a message's values are.
        for (node, field, default) in parser.defaults {
            let mut bytes = Vec::new();
            let Kind::Record(fields, _) = &schema.nodes[node] else { unreachable!("defaults are a record's") };
            let name = fields[field].name.clone();
            let text = default.to_string();
            let default: Json = serde_json::from_str(&text).map_err(|e| format!("the default of {name}: {e}"))?;
            schema
                .value(fields[field].node, &default, &mut bytes, &Path::Field(&Path::Root, &name), 0)
                .map_err(|e| format!("the default of {e}"))?;
            let Kind::Record(fields, _) = &mut schema.nodes[node] else { unreachable!() };
            fields[field].default = Some(bytes);
        }
        Ok(schema)
    }

    /// Check `value` (one parsed message) and append its Avro body to `out`; on failure the
    /// reason, naming the field, and `out` holds a partial body the caller drops.
    pub fn encode(&self, value: &Json, out: &mut Vec<u8>) -> Result<(), String> {
        let Json::Object(entries) = value else {
            return Err(format!("expected a JSON object, got {}", show(value)));
        };
        self.record(self.root, entries, out, &Path::Root, 0)
    }

    /// A record's fields in schema order from an object's entries in any order: a key given
    /// twice takes its last value; the first key that is no field (nor ignored) is an error,
    /// after the fields' own errors.
    fn record(&self, node: usize, entries: &[(Cow<str>, Json)], out: &mut Vec<u8>, path: &Path, depth: usize) -> Result<(), String> {
        let Kind::Record(fields, index) = &self.nodes[node] else { unreachable!("a record") };
        let mut slots = vec![usize::MAX; fields.len()];
        let mut unknown = None;
        let top = matches!(path, Path::Root);
        for (i, (key, _)) in entries.iter().enumerate() {
            // Producers mostly write the fields in schema order: try the one after the last.
            let guess = if i < fields.len() && fields[i].name == *key { Some(i) } else { index.get(key.as_ref()).copied() };
            match guess {
                Some(f) => slots[f] = i,
                None if unknown.is_none() && !(top && self.ignored.contains(key.as_ref())) => unknown = Some(i),
                None => {}
            }
        }
        for (field, &slot) in fields.iter().zip(&slots) {
            let here = Path::Field(path, &field.name);
            match (entries.get(slot), &field.default) {
                (Some((_, value)), _) => self.value(field.node, value, out, &here, depth + 1)?,
                (None, Some(bytes)) => out.extend_from_slice(bytes),
                (None, None) => return Err(format!("{here}: missing, and the field has no default")),
            }
        }
        match unknown {
            Some(i) => Err(format!("{}: unknown field", Path::Field(path, &entries[i].0))),
            None => Ok(()),
        }
    }

    fn value(&self, node: usize, value: &Json, out: &mut Vec<u8>, path: &Path, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{path}: nested more than {MAX_DEPTH} deep"));
        }
        let mismatch = || Err(format!("{path}: expected {}, got {}", self.describe(node), show(value)));
        match (&self.nodes[node], value) {
            (Kind::Null, Json::Null) => {}
            (Kind::Boolean, Json::Bool(b)) => out.push(u8::from(*b)),
            (Kind::Int, Json::U64(n)) => match i32::try_from(*n) {
                Ok(i) => long(out, i64::from(i)),
                Err(_) => return Err(format!("{path}: {n} is out of the int range")),
            },
            (Kind::Int, Json::I64(n)) => match i32::try_from(*n) {
                Ok(i) => long(out, i64::from(i)),
                Err(_) => return Err(format!("{path}: {n} is out of the int range")),
            },
            (Kind::Long | Kind::Timestamp, Json::U64(n)) => match i64::try_from(*n) {
                Ok(i) => long(out, i),
                Err(_) => return Err(format!("{path}: {n} is out of the long range")),
            },
            (Kind::Long | Kind::Timestamp, Json::I64(n)) => long(out, *n),
            (Kind::Float, Json::U64(n)) => out.extend_from_slice(&(*n as f32).to_le_bytes()),
            (Kind::Float, Json::I64(n)) => out.extend_from_slice(&(*n as f32).to_le_bytes()),
            (Kind::Float, Json::F64(n)) => out.extend_from_slice(&(*n as f32).to_le_bytes()),
            (Kind::Double, Json::U64(n)) => out.extend_from_slice(&(*n as f64).to_le_bytes()),
            (Kind::Double, Json::I64(n)) => out.extend_from_slice(&(*n as f64).to_le_bytes()),
            (Kind::Double, Json::F64(n)) => out.extend_from_slice(&n.to_le_bytes()),
            (Kind::String, Json::Str(s)) => text(out, s.as_bytes()),
            (Kind::Uuid, Json::Str(s)) => {
                if !is_uuid(s.as_bytes()) {
                    return Err(format!("{path}: not a UUID: {}", show(value)));
                }
                text(out, s.as_bytes());
            }
            (Kind::Timestamp, Json::Str(s)) => match parse_timestamp(s) {
                Some(ms) => long(out, ms),
                None => {
                    return Err(format!(
                        "{path}: {} is not an ISO 8601 timestamp with an offset (like 2026-11-20T08:00:00.000Z)",
                        show(value)))
                }
            },
            (Kind::Bytes, Json::Str(s)) => match latin1(s) {
                Some(bytes) => text(out, &bytes),
                None => return mismatch(),
            },
            (Kind::Fixed(size), Json::Str(s)) => match latin1(s) {
                Some(bytes) if bytes.len() == *size => out.extend_from_slice(&bytes),
                _ => return mismatch(),
            },
            (Kind::Enum { symbols, default }, Json::Str(s)) => match symbols.iter().position(|symbol| symbol == s).or(*default) {
                Some(index) => long(out, index as i64),
                None => return Err(format!("{path}: unknown symbol {}", show(value))),
            },
            (Kind::Array(items), Json::Array(values)) => {
                if !values.is_empty() {
                    long(out, values.len() as i64);
                    for (i, item) in values.iter().enumerate() {
                        self.value(*items, item, out, &Path::Item(path, i), depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Kind::Map(values), Json::Object(entries)) => {
                // A key given twice is one entry, where it came first, with its last value.
                let order = distinct_keys(entries);
                if !order.is_empty() {
                    long(out, order.len() as i64);
                    for (key, value) in order {
                        text(out, key.as_bytes());
                        self.value(*values, value, out, &Path::Key(path, key), depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Kind::Record(..), Json::Object(entries)) => self.record(node, entries, out, path, depth)?,
            (Kind::Union(branches), _) => {
                let start = out.len();
                let mut last = None;
                for (i, &branch) in branches.iter().enumerate() {
                    if matches!(self.nodes[branch], Kind::Null) != value.is_null() {
                        continue;
                    }
                    long(out, i as i64);
                    match self.value(branch, value, out, path, depth + 1) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            out.truncate(start);
                            last = Some(e);
                        }
                    }
                }
                let fitting = branches.iter().filter(|&&b| matches!(self.nodes[b], Kind::Null) != value.is_null()).count();
                return match last {
                    // One branch could take it: its reason is the one that says most.
                    Some(e) if fitting == 1 => Err(e),
                    _ => mismatch(),
                };
            }
            _ => return mismatch(),
        }
        Ok(())
    }

    /// A type as failure messages name it.
    fn describe(&self, node: usize) -> String {
        match &self.nodes[node] {
            Kind::Null => "null".into(),
            Kind::Boolean => "boolean".into(),
            Kind::Int => "int".into(),
            Kind::Long => "long".into(),
            Kind::Float => "float".into(),
            Kind::Double => "double".into(),
            Kind::Bytes => "bytes".into(),
            Kind::String => "string".into(),
            Kind::Uuid => "a UUID string".into(),
            Kind::Timestamp => "epoch milliseconds or an ISO 8601 string".into(),
            Kind::Fixed(size) => format!("fixed({size})"),
            Kind::Enum { .. } => "a symbol (string)".into(),
            Kind::Array(_) => "an array".into(),
            Kind::Map(_) | Kind::Record(..) => "an object".into(),
            Kind::Union(branches) => branches.iter().map(|&b| self.describe(b)).collect::<Vec<_>>().join(" or "),
        }
    }
}

/// Where a value is in a message, written out only for a failure: `details["k"]`, `items[3]`.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent, index) => write!(f, "{parent}[{index}]"),
            Path::Key(parent, key) => write!(f, "{parent}[{}]", serde_json::to_string(key).expect("a string serializes")),
        }
    }
}

/// An object's entries with each key once, where it came first, with its last value.
fn distinct_keys<'v, 'a>(entries: &'v [(Cow<'a, str>, Json<'a>)]) -> Vec<(&'v str, &'v Json<'a>)> {
    let mut order: Vec<(&str, &Json)> = Vec::with_capacity(entries.len());
    if entries.len() <= 16 {
        for (key, value) in entries {
            match order.iter_mut().find(|(k, _)| *k == key.as_ref()) {
                Some(entry) => entry.1 = value,
                None => order.push((key, value)),
            }
        }
    } else {
        let mut position: HashMap<&str, usize, foldhash::fast::FixedState> = HashMap::default();
        for (key, value) in entries {
            match position.get(key.as_ref()) {
                Some(&p) => order[p].1 = value,
                None => {
                    position.insert(key, order.len());
                    order.push((key, value));
                }
            }
        }
    }
    order
}

#[inline]
fn long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[inline]
fn text(out: &mut Vec<u8>, bytes: &[u8]) {
    long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Whether a message is a JSON object: its first byte that is not JSON whitespace is `{`
/// (an Avro single-object message starts with C3 01).
#[inline]
pub fn looks_like_json(message: &[u8]) -> bool {
    message.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'{')
}
