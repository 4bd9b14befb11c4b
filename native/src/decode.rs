//! One event's batch decoder: single-object messages -> one Arrow record batch and the failures.
//!
//! Per message: the header names the writer version by fingerprint (BadMarker, UnknownSchema,
//! WrongEventType otherwise), `check` walks the body against it (UndecodableBody), and arrow-avro
//! decodes it, resolved from the writer version to the reader's. arrow-avro runs in its
//! unframed-datum mode, one decoder per writer version, because the framing and its failure
//! classes are ours: its framed mode cannot tell a truncated body from one whose end is still to
//! come, nor trailing bytes from the start of the next message.
//!
//! A JSON object instead (`json/`) is checked against the reader version and written as its
//! Avro body, which a decoder of the reader's own version reads (InvalidJson otherwise); its rows
//! take their place among the Avro rows in message order.
//!
//! The failure classes and the decoded values are those of `connectors/kafka/codec.py`'s
//! `Codec.decode_batch_arrow`, the reference (tests/unit/test_native_codec.py and
//! tests/unit/test_native_json.py prove it).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::SchemaRef;
use arrow_avro::reader::{Decoder, DecoderMode, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, SchemaStore};

use crate::check::{check, BodyError};
use crate::convert::{dedupe_map_keys, is_uuid};
use crate::json::{looks_like_json, JsonSchema};
use crate::schema::Schema;

pub const MARKER: [u8; 2] = [0xc3, 0x01];
pub const HEADER_SIZE: usize = 10;
/// Rows one arrow-avro decoder may hold before a flush; batches are far smaller.
const MAX_ROWS: usize = 1 << 32;
/// Messages are separate Python objects all over the heap: ask for one this far ahead while
/// the current one is decoded, so its bytes are in cache when its turn comes.
const PREFETCH_AHEAD: usize = 4;

/// A writer version as the registry knows it.
pub struct WriterSpec {
    pub fingerprint: [u8; 8],
    pub event: String,
    pub version: u32,
    /// The schema without logical types (timestamps as longs, UUIDs as strings).
    pub schema_json: String,
}

/// A message that could not be decoded: its index in the batch, the codec's error class, why.
pub struct Failure {
    pub index: usize,
    pub class: &'static str,
    pub message: String,
}

/// What the decoder is built from: the reader version, every writer version, the output.
pub struct Config {
    pub event: String,
    pub reader_label: String,
    /// The reader version without logical types, like the writers'.
    pub reader_json: String,
    pub writers: Vec<WriterSpec>,
    /// The output schema, `Codec.arrow_schema(event)`.
    pub target: SchemaRef,
    /// Columns whose text must be a UUID (8-4-4-4-12 hex digits).
    pub uuid_columns: Vec<usize>,
    /// Named in UnknownSchema messages.
    pub schemas_dir: String,
    /// Rows per output record batch. Column buffers that stay this small grow in cache; one
    /// buffer for a whole large batch is copied at each doubling and faulted in page by page.
    pub chunk_rows: usize,
    /// The reader version as JSON messages are checked against it (see `json/`).
    pub json: JsonSchema,
}

struct Writer {
    label: String,
    /// None for another event's version: its messages are WrongEventType.
    own: Option<OwnWriter>,
}

struct OwnWriter {
    schema: Schema,
    schema_json: String,
    /// Err: the version cannot be resolved to the reader, so none of its messages can.
    decoder: Result<Decoder, String>,
}

pub struct BatchDecoder {
    config: Config,
    writers: Vec<Writer>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    /// The fingerprint and index of the writer version that is the reader's, if any.
    reader_writer: Option<([u8; 8], usize)>,
    /// Reads the bodies written from JSON messages: the reader's version, nothing to resolve.
    json_decoder: Decoder,
    /// The body of the JSON message at hand, reused.
    json_body: Vec<u8>,
}

/// Which decoder holds the rows not flushed yet.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Writer(usize),
    Json,
}

fn new_decoder(writer_json: &str, reader_json: &str) -> Result<Decoder, String> {
    let mut store = SchemaStore::new();
    let fingerprint = store.register(AvroSchema::new(writer_json.to_string())).map_err(|e| e.to_string())?;
    let mut builder = ReaderBuilder::new().with_writer_schema_store(store).with_active_fingerprint(fingerprint);
    // The reader's own version needs no resolution, and decodes faster without it.
    if writer_json != reader_json {
        builder = builder.with_reader_schema(AvroSchema::new(reader_json.to_string()));
    }
    builder
        .with_decoder_mode(DecoderMode::UnframedDatum)
        .with_batch_size(MAX_ROWS)
        .build_decoder()
        .map_err(|e| e.to_string())
}

impl BatchDecoder {
    /// Build the decoders of `config.event`'s writer versions.
    ///
    /// Fails when a schema does not parse or arrow-avro's columns cannot become the target's;
    /// a writer version that does not resolve to the reader is no error here, its messages fail.
    pub fn new(config: Config) -> Result<BatchDecoder, String> {
        let mut writers = Vec::with_capacity(config.writers.len());
        let mut by_fingerprint = HashMap::new();
        let mut reader_writer = None;
        for spec in &config.writers {
            if spec.event == config.event && spec.schema_json == config.reader_json {
                reader_writer = Some((spec.fingerprint, writers.len()));
            }
            let label = format!("{} v{}", spec.event, spec.version);
            let own = if spec.event == config.event {
                let schema = Schema::parse(&spec.schema_json, &config.reader_json).map_err(|e| format!("{label}: {e}"))?;
                let decoder = new_decoder(&spec.schema_json, &config.reader_json);
                if let Ok(decoder) = &decoder {
                    check_castable(&decoder.schema(), &config.target).map_err(|e| format!("{label}: {e}"))?;
                }
                Some(OwnWriter { schema, schema_json: spec.schema_json.clone(), decoder })
            } else {
                None
            };
            by_fingerprint.insert(spec.fingerprint, writers.len());
            writers.push(Writer { label, own });
        }
        let json_decoder = new_decoder(&config.reader_json, &config.reader_json).map_err(|e| format!("JSON: {e}"))?;
        check_castable(&json_decoder.schema(), &config.target).map_err(|e| format!("JSON: {e}"))?;
        Ok(BatchDecoder { config, writers, by_fingerprint, reader_writer, json_decoder, json_body: Vec::new() })
    }

    /// The writer version a message names in its header, checked against the event.
    fn writer_of(&self, message: Option<&[u8]>) -> Result<usize, (&'static str, String)> {
        let data = match message {
            Some(data) if data.len() >= HEADER_SIZE => data,
            _ => {
                let size = message.map_or("no value".to_string(), |d| format!("{} bytes", d.len()));
                return Err(("BadMarker", format!(
                    "not an Avro single-object message: {size}, less than the {HEADER_SIZE}-byte header")));
            }
        };
        if data[..2] != MARKER {
            return Err(("BadMarker", format!(
                "not an Avro single-object message: starts with {}, not c301", hex(&data[..2]))));
        }
        let fingerprint: [u8; 8] = data[2..HEADER_SIZE].try_into().expect("8 bytes");
        // Most messages are of the reader's own version: compare with it before hashing.
        let found = match &self.reader_writer {
            Some((hot, index)) if *hot == fingerprint => Some(index),
            _ => self.by_fingerprint.get(&fingerprint),
        };
        let Some(&index) = found else {
            return Err(("UnknownSchema", format!(
                "no known schema has fingerprint {} (schemas in {})", hex(&fingerprint), self.config.schemas_dir)));
        };
        let writer = &self.writers[index];
        if writer.own.is_none() {
            return Err(("WrongEventType", format!("expected {}, got {}", self.config.event, writer.label)));
        }
        Ok(index)
    }

    /// Decode a batch: the record batches (of at most `chunk_rows` rows) of the messages that
    /// decode, in order, and the others' failures. A message is JSON when `json[index]` says so
    /// (its headers did) or when it looks like a JSON object; Avro single-object otherwise.
    ///
    /// Err only for a fault of this decoder itself (a bug), never for a message.
    pub fn decode(&mut self, messages: &[Option<&[u8]>], json: &[bool]) -> Result<(Vec<RecordBatch>, Vec<Failure>), String> {
        let mut failures = Vec::new();
        let mut batches: Vec<RecordBatch> = Vec::new();
        // The message index of each row decoded, in order.
        let mut rows: Vec<usize> = Vec::with_capacity(messages.len());
        // The decoder that holds rows, the Avro bodies of those rows (kept to rebuild a writer's
        // decoder, see below) and how many rows it holds.
        let mut active: Option<Source> = None;
        let mut pending: Vec<&[u8]> = Vec::new();
        let mut held = 0;
        for (index, message) in messages.iter().enumerate() {
            if let Some(Some(ahead)) = messages.get(index + PREFETCH_AHEAD) {
                prefetch(ahead);
            }
            if json.get(index).copied().unwrap_or(false) || message.is_some_and(looks_like_json) {
                if let Err(message) = self.json_to_body(*message) {
                    failures.push(Failure { index, class: "InvalidJson", message });
                    continue;
                }
                if active != Some(Source::Json) {
                    if let Some(previous) = active {
                        self.flush(previous, &mut batches)?;
                    }
                    active = Some(Source::Json);
                    pending.clear();
                    held = 0;
                }
                match self.json_decoder.decode(&self.json_body) {
                    Ok(n) if n == self.json_body.len() => {}
                    _ => return Err(format!("{}: a body written from JSON does not decode", self.config.reader_label)),
                }
                rows.push(index);
                held += 1;
                if held >= self.config.chunk_rows {
                    self.flush(Source::Json, &mut batches)?;
                    held = 0;
                }
                continue;
            }
            let w = match self.writer_of(*message) {
                Ok(w) => w,
                Err((class, message)) => {
                    failures.push(Failure { index, class, message });
                    continue;
                }
            };
            let body = &message.expect("checked by writer_of")[HEADER_SIZE..];
            let reader_label = &self.config.reader_label;
            let writer = &self.writers[w];
            let own = writer.own.as_ref().expect("checked by writer_of");
            let fail = |message: String| Failure { index, class: "UndecodableBody", message };
            if let Err(e) = &own.decoder {
                failures.push(fail(format!("{} read as {reader_label}: {e}", writer.label)));
                continue;
            }
            match check(&own.schema, body) {
                Ok(n) if n == body.len() => {}
                Ok(n) => {
                    failures.push(fail(format!("{}: {} bytes after the end of the body", writer.label, body.len() - n)));
                    continue;
                }
                Err(BodyError::Truncated) => {
                    failures.push(fail(format!("{}: body truncated ({} bytes)", writer.label, body.len())));
                    continue;
                }
                Err(BodyError::TruncatedInSkipped) => {
                    failures.push(fail(format!(
                        "{}: body truncated ({} bytes) in a field {reader_label} skips", writer.label, body.len())));
                    continue;
                }
                Err(BodyError::Malformed { at, reason }) => {
                    failures.push(fail(format!(
                        "{} read as {reader_label}: {reason} (byte {} of the message)", writer.label, at + HEADER_SIZE)));
                    continue;
                }
            }
            if active != Some(Source::Writer(w)) {
                if let Some(previous) = active {
                    self.flush(previous, &mut batches)?;
                }
                active = Some(Source::Writer(w));
                pending.clear();
                held = 0;
            }
            let writer = &mut self.writers[w];
            let own = writer.own.as_mut().expect("checked by writer_of");
            let decoder = own.decoder.as_mut().expect("checked above");
            match decoder.decode(body) {
                Ok(n) if n == body.len() => {
                    pending.push(body);
                    rows.push(index);
                    held += 1;
                    if held >= self.config.chunk_rows {
                        self.flush(Source::Writer(w), &mut batches)?;
                        pending.clear();
                        held = 0;
                    }
                }
                outcome => {
                    // Only resolution can fail here (an enum symbol the reader lacks, with no
                    // default). The failed body left part of a row behind: rebuild the decoder
                    // with the rows before it and flush them.
                    let reason = match outcome {
                        Ok(n) => format!("{n} of the body's {} bytes read", body.len()),
                        Err(e) => e.to_string(),
                    };
                    failures.push(fail(format!("{} read as {}: {reason}", writer.label, self.config.reader_label)));
                    let mut fresh = new_decoder(&own.schema_json, &self.config.reader_json)?;
                    for done in &pending {
                        match fresh.decode(done) {
                            Ok(n) if n == done.len() => {}
                            _ => return Err(format!("{}: a body decoded once fails the second time", writer.label)),
                        }
                    }
                    own.decoder = Ok(fresh);
                    self.flush(Source::Writer(w), &mut batches)?;
                    pending.clear();
                    held = 0;
                }
            }
        }
        if let Some(previous) = active {
            self.flush(previous, &mut batches)?;
        }
        let mut checked = Vec::with_capacity(batches.len());
        let mut first_row = 0;
        for batch in batches {
            let count = batch.num_rows();
            checked.push(self.check_uuids(batch, &rows[first_row..first_row + count], &mut failures)?);
            first_row += count;
        }
        failures.sort_by_key(|f| f.index);
        Ok((checked, failures))
    }

    /// Parse a JSON message and write it into `json_body` as the reader version's Avro body.
    fn json_to_body(&mut self, message: Option<&[u8]>) -> Result<(), String> {
        let label = &self.config.reader_label;
        let Some(data) = message else {
            return Err(format!("JSON as {label}: no value"));
        };
        let value: crate::json::value::Json =
            serde_json::from_slice(data).map_err(|e| format!("JSON as {label}: not JSON: {e}"))?;
        self.json_body.clear();
        self.config.json.encode(&value, &mut self.json_body).map_err(|e| format!("JSON as {label}: {e}"))
    }

    /// Flush the rows `source`'s decoder holds as a batch of the target schema.
    fn flush(&mut self, source: Source, batches: &mut Vec<RecordBatch>) -> Result<(), String> {
        let (decoder, label) = match source {
            Source::Json => (&mut self.json_decoder, "JSON"),
            Source::Writer(w) => {
                let writer = &mut self.writers[w];
                let decoder = writer.own.as_mut().and_then(|o| o.decoder.as_mut().ok()).expect("an own, resolvable writer");
                (decoder, writer.label.as_str())
            }
        };
        let Some(batch) = decoder.flush().map_err(|e| format!("{label}: {e}"))? else {
            return Ok(());
        };
        let target = &self.config.target;
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| {
                let column = if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    cast(column, field.data_type()).map_err(|e| e.to_string())?
                };
                dedupe_map_keys(&column)
            })
            .collect::<Result<Vec<ArrayRef>, String>>()?;
        batches.push(RecordBatch::try_new(target.clone(), columns).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// Drop the rows whose UUID columns hold other text, each a failure of its message.
    fn check_uuids(&self, batch: RecordBatch, rows: &[usize], failures: &mut Vec<Failure>) -> Result<RecordBatch, String> {
        let columns: Vec<_> = self.config.uuid_columns.iter().map(|&c| batch.column(c).as_string::<i32>()).collect();
        let mut bad: Vec<usize> = Vec::new();
        for column in &columns {
            let (offsets, values) = (column.value_offsets(), column.value_data());
            for (row, w) in offsets.windows(2).enumerate() {
                if !is_uuid(&values[w[0] as usize..w[1] as usize]) && column.is_valid(row) {
                    bad.push(row);
                }
            }
        }
        bad.sort_unstable();
        bad.dedup();
        if bad.is_empty() {
            return Ok(batch);
        }
        let names: Vec<&str> = self.config.uuid_columns.iter().map(|&c| self.config.target.field(c).name().as_str()).collect();
        let mut keep = vec![true; batch.num_rows()];
        for &row in &bad {
            keep[row] = false;
            let values: Vec<String> = names
                .iter()
                .zip(&columns)
                .map(|(name, c)| if c.is_valid(row) { format!("{name:?}: {:?}", c.value(row)) } else { format!("{name:?}: null") })
                .collect();
            failures.push(Failure {
                index: rows[row],
                class: "UndecodableBody",
                message: format!("{}: not a UUID in {{{}}}", self.config.reader_label, values.join(", ")),
            });
        }
        filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())
    }
}

/// arrow-avro's columns must become the target's by a cast: same names, castable types.
fn check_castable(decoded: &SchemaRef, target: &SchemaRef) -> Result<(), String> {
    let names = |s: &SchemaRef| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    if names(decoded) != names(target) {
        return Err(format!("decodes columns {:?}, the Arrow schema has {:?}", names(decoded), names(target)));
    }
    for (from, to) in decoded.fields().iter().zip(target.fields()) {
        if !arrow::compute::can_cast_types(from.data_type(), to.data_type()) {
            return Err(format!("column {}: {} cannot become {}", from.name(), from.data_type(), to.data_type()));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hint the CPU to load `bytes` (up to 1 KiB of it) into cache; no effect on results.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes.len().min(1024)).step_by(64) {
        // SAFETY: a prefetch is a hint that never faults; the address is inside `bytes`.
        unsafe { std::arch::x86_64::_mm_prefetch(bytes.as_ptr().add(offset).cast(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
