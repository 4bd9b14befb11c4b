//! What the decoded columns need to equal the reference's: map keys held once, UUID text checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, MapArray, StringArray, StructArray, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::compute::take;
use arrow::datatypes::DataType;

/// Maps holding a key more than once hold it once, where it came first, with its last value.
///
/// The reference reads an Avro map into a Python dict, which does exactly that; Avro itself
/// does not say. Columns without such a map come back as they are, without a copy.
pub fn dedupe_map_keys(array: &ArrayRef) -> Result<ArrayRef, String> {
    match array.data_type() {
        DataType::List(field) => {
            let list = array.as_list::<i32>();
            let values = dedupe_map_keys(list.values())?;
            if Arc::ptr_eq(&values, list.values()) {
                return Ok(array.clone());
            }
            let list = ListArray::try_new(field.clone(), list.offsets().clone(), values, list.nulls().cloned());
            Ok(Arc::new(list.map_err(|e| e.to_string())?))
        }
        DataType::Map(field, ordered) => {
            let map = array.as_map();
            let values = dedupe_map_keys(map.values())?;
            let values_changed = !Arc::ptr_eq(&values, map.values());
            let mut entries = map.entries().clone();
            if values_changed {
                let (fields, mut columns, nulls) = entries.into_parts();
                columns[1] = values;
                entries = StructArray::try_new(fields, columns, nulls).map_err(|e| e.to_string())?;
            }
            let keys = map.keys().as_string::<i32>();
            let offsets = map.value_offsets();
            let rows = || offsets.windows(2).map(|w| (w[0] as usize, w[1] as usize));
            if !rows().any(|(start, end)| has_duplicate(keys, start, end)) {
                if !values_changed {
                    return Ok(array.clone());
                }
                let map = MapArray::try_new(field.clone(), map.offsets().clone(), entries, map.nulls().cloned(), *ordered);
                return Ok(Arc::new(map.map_err(|e| e.to_string())?));
            }
            let mut indices: Vec<u32> = Vec::with_capacity(keys.len());
            let mut new_offsets: Vec<i32> = Vec::with_capacity(map.len() + 1);
            new_offsets.push(0);
            for (start, end) in rows() {
                let mut order: Vec<usize> = Vec::with_capacity(end - start);
                let mut position: HashMap<&str, usize> = HashMap::with_capacity(end - start);
                for entry in start..end {
                    match position.get(keys.value(entry)) {
                        Some(&p) => order[p] = entry,
                        None => {
                            position.insert(keys.value(entry), order.len());
                            order.push(entry);
                        }
                    }
                }
                indices.extend(order.iter().map(|&e| e as u32));
                new_offsets.push(indices.len() as i32);
            }
            let entries = take(&entries, &UInt32Array::from(indices), None).map_err(|e| e.to_string())?;
            let map = MapArray::try_new(
                field.clone(),
                OffsetBuffer::new(new_offsets.into()),
                entries.as_struct().clone(),
                map.nulls().cloned(),
                *ordered,
            );
            Ok(Arc::new(map.map_err(|e| e.to_string())?))
        }
        _ => Ok(array.clone()),
    }
}

fn has_duplicate(keys: &StringArray, start: usize, end: usize) -> bool {
    match end - start {
        0 | 1 => false,
        n if n <= 16 => (start..end).any(|i| (start..i).any(|j| keys.value(i) == keys.value(j))),
        n => {
            let mut seen = HashSet::with_capacity(n);
            !(start..end).all(|i| seen.insert(keys.value(i)))
        }
    }
}

/// Whether `text` is a UUID as the reference's `_UUID_PATTERN` says: 8-4-4-4-12 hex digits.
#[inline]
pub fn is_uuid(text: &[u8]) -> bool {
    const HEX: [bool; 256] = {
        let mut table = [false; 256];
        let mut c = 0;
        while c < 256 {
            table[c] = (c as u8).is_ascii_hexdigit();
            c += 1;
        }
        table
    };
    let Ok(text) = <&[u8; 36]>::try_from(text) else {
        return false;
    };
    let mut ok = text[8] == b'-' && text[13] == b'-' && text[18] == b'-' && text[23] == b'-';
    for (i, &c) in text.iter().enumerate() {
        ok &= HEX[c as usize] | matches!(i, 8 | 13 | 18 | 23);
    }
    ok
}
