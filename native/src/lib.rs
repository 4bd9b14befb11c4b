//! `ezstream_native`: the native batch decoder of EzAigent Streams.
//!
//! One [`Decoder`] per event turns a batch of Avro single-object messages, and JSON objects among
//! them, into one Arrow table and the failures of the messages that do not decode, with the GIL released while it
//! works. connectors/kafka/native.py builds the decoders from the codec's schema registry and is
//! the only caller; `SOURCE_HASH` lets it refuse an extension built from other sources.

use std::sync::Mutex;

use arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef};
use arrow::record_batch::{RecordBatchIterator, RecordBatchReader};
use arrow::pyarrow::{FromPyArrow, IntoPyArrow};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict};

mod check;
mod convert;
mod decode;
mod json;
mod schema;

use decode::{BatchDecoder, Config, WriterSpec};

/// A failure as Python gets it: (message index, error class, why).
type FailureTuple = (usize, &'static str, String);

/// Decodes the messages of one event's topic into one `pyarrow.Table`.
///
/// :param event: the event the messages must hold (others are WrongEventType).
/// :param reader_label: how failures name the reader version, e.g. ``llm_call v2``.
/// :param reader_schema_json: the reader version's Avro schema, logical types left out.
/// :param writers: fingerprint (the header's 8 bytes) -> (event, version, Avro schema JSON
///     without logical types), for every version of every event.
/// :param arrow_schema: the output schema (``Codec.arrow_schema(event)``).
/// :param uuid_fields: the columns whose text must be a UUID.
/// :param schemas_dir: named in UnknownSchema failures.
/// :param chunk_rows: rows per chunk of the output table.
/// :param reader_json_schema: the reader version's schema with its logical types, which JSON
///     messages are checked against (a UUID, a timestamp).
/// :param other_fields: top-level fields of the event's other versions, which a JSON message
///     may carry and which are ignored (a field no version has fails it).
#[pyclass(frozen, module = "ezstream_native")]
struct Decoder {
    event: String,
    target: SchemaRef,
    inner: Mutex<BatchDecoder>,
}

#[pymethods]
impl Decoder {
    #[new]
    #[allow(clippy::too_many_arguments)] // the Python signature, documented above
    #[pyo3(signature = (event, reader_label, reader_schema_json, writers, arrow_schema, uuid_fields, schemas_dir, chunk_rows = 8192, reader_json_schema = None, other_fields = Vec::new()))]
    fn new(
        event: String,
        reader_label: String,
        reader_schema_json: String,
        writers: &Bound<'_, PyDict>,
        arrow_schema: &Bound<'_, PyAny>,
        uuid_fields: Vec<String>,
        schemas_dir: String,
        chunk_rows: usize,
        reader_json_schema: Option<String>,
        other_fields: Vec<String>,
    ) -> PyResult<Self> {
        if chunk_rows == 0 {
            return Err(PyValueError::new_err("chunk_rows must be at least 1"));
        }
        let mut specs = Vec::with_capacity(writers.len());
        for (key, value) in writers.iter() {
            let fingerprint: [u8; 8] = key
                .cast::<PyBytes>()
                .map_err(|_| PyTypeError::new_err("writers: keys are the 8 fingerprint bytes"))?
                .as_bytes()
                .try_into()
                .map_err(|_| PyValueError::new_err("writers: a fingerprint is 8 bytes"))?;
            let (writer_event, version, schema_json): (String, u32, String) = value.extract()?;
            specs.push(WriterSpec { fingerprint, event: writer_event, version, schema_json });
        }
        let target = std::sync::Arc::new(ArrowSchema::from_pyarrow_bound(arrow_schema)?);
        let mut uuid_columns = Vec::with_capacity(uuid_fields.len());
        for name in &uuid_fields {
            let index = target
                .index_of(name)
                .map_err(|_| PyValueError::new_err(format!("uuid field {name:?} is not a column")))?;
            if target.field(index).data_type() != &DataType::Utf8 {
                return Err(PyValueError::new_err(format!("uuid field {name:?} is not a string column")));
            }
            uuid_columns.push(index);
        }
        let json = json::JsonSchema::parse(reader_json_schema.as_deref().unwrap_or(&reader_schema_json), other_fields)
            .map_err(|e| PyValueError::new_err(format!("{event}: JSON: {e}")))?;
        let config = Config {
            event: event.clone(),
            reader_label,
            reader_json: reader_schema_json,
            writers: specs,
            target: target.clone(),
            uuid_columns,
            schemas_dir,
            chunk_rows,
            json,
        };
        let inner = BatchDecoder::new(config).map_err(|e| PyValueError::new_err(format!("{event}: {e}")))?;
        Ok(Decoder { event, target, inner: Mutex::new(inner) })
    }

    /// The event this decoder reads.
    #[getter]
    fn event(&self) -> &str {
        &self.event
    }

    /// Decode ``messages`` (each ``bytes`` or ``None``): Avro single-object messages, and JSON
    /// objects (a message whose first byte past JSON whitespace is ``{``, or whose index is in
    /// ``json``: its headers said ``content-type: application/json``).
    ///
    /// :returns: the ``pyarrow.Table`` of the messages that decode, in message order (in
    ///     chunks of at most ``chunk_rows``), and ``[(index, error_class, message), ...]`` for
    ///     the others, by index.
    /// :raises TypeError: a message is neither bytes nor None.
    #[pyo3(signature = (messages, json = Vec::new()))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        json: Vec<usize>,
    ) -> PyResult<(Bound<'py, PyAny>, Vec<FailureTuple>)> {
        let mut owned: Vec<Option<PyBackedBytes>> = Vec::with_capacity(messages.len().unwrap_or(0));
        for (index, item) in messages.try_iter()?.enumerate() {
            let item = item?;
            if item.is_none() {
                owned.push(None);
                continue;
            }
            let bytes = item.extract::<PyBackedBytes>().map_err(|_| {
                let kind = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                PyTypeError::new_err(format!("message {index} is {kind}, not bytes or None"))
            })?;
            owned.push(Some(bytes));
        }
        let slices: Vec<Option<&[u8]>> = owned.iter().map(|m| m.as_deref()).collect();
        let mut is_json = vec![false; if json.is_empty() { 0 } else { slices.len() }];
        for index in json {
            *is_json.get_mut(index).ok_or_else(|| PyValueError::new_err(format!("json: no message {index}")))? = true;
        }
        let outcome = py.detach(|| {
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| format!("{}: the decoder broke in an earlier call", self.event))?;
            inner.decode(&slices, &is_json)
        });
        let (batches, failures) = outcome.map_err(PyRuntimeError::new_err)?;
        let failures = failures.into_iter().map(|f| (f.index, f.class, f.message)).collect();
        // One export for all the chunks: a stream that pyarrow reads into one table.
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), self.target.clone());
        let reader: Box<dyn RecordBatchReader + Send> = Box::new(reader);
        let table = reader.into_pyarrow(py)?.call_method0(pyo3::intern!(py, "read_all"))?;
        Ok((table, failures))
    }
}

#[pymodule]
fn ezstream_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Hash of the sources it was built from (build.rs); the wrapper compares it with native/.
    m.add("SOURCE_HASH", env!("EZSTREAM_NATIVE_SOURCE_HASH"))?;
    Ok(())
}

/// The decoder grows and drops large column buffers every batch; glibc's malloc returns them to
/// the kernel each time and faults them in again (a tenth of the time), mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
