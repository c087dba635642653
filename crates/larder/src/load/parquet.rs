//! Parquet: a key column (`--key-column`, default `key`: UTF-8) and one column per field,
//! named like the field, of `list<float>`, `large_list<float>` or `fixed_size_list<float>`
//! (float32, float64 or float16 values). Read in record batches with only the needed columns
//! projected, so memory stays one batch. A null list means the row lacks that field.

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use larder_store::NamespaceSchema;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{LoadError, Sink, Source};

/// Rows per record batch.
const BATCH_ROWS: usize = 1024;

pub(crate) struct ParquetSource {
    reader: ParquetRecordBatchReader,
    rows: u64,
    key_column: String,
    fields: Vec<String>,
}

fn is_float_list(t: &DataType) -> bool {
    let inner = match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        _ => return false,
    };
    matches!(
        inner,
        DataType::Float32 | DataType::Float64 | DataType::Float16
    )
}

impl ParquetSource {
    pub(crate) fn open(
        path: &Path,
        key_column: &str,
        only: Option<&str>,
        schema: &NamespaceSchema,
    ) -> Result<Self, LoadError> {
        let bad = |why: String| LoadError::file(format!("{}: {why}", path.display()));
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| bad(format!("not a Parquet file: {e}")))?;
        let arrow = builder.schema().clone();
        let key_index = arrow
            .index_of(key_column)
            .map_err(|_| bad(format!("no key column {key_column:?} (use --key-column)")))?;
        if !matches!(
            arrow.field(key_index).data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(bad(format!(
                "key column {key_column:?} is {}, expected strings",
                arrow.field(key_index).data_type()
            )));
        }
        let mut roots = vec![key_index];
        let mut fields = Vec::new();
        for (i, column) in arrow.fields().iter().enumerate() {
            let name = column.name();
            if i == key_index || !is_float_list(column.data_type()) {
                continue;
            }
            if only.is_some_and(|f| f != name) {
                continue;
            }
            if !schema.fields.contains_key(name) {
                return Err(bad(format!(
                    "column {name:?} holds vectors but is not a field of the namespace (fields: {}); load one field with --field",
                    schema.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            roots.push(i);
            fields.push(name.clone());
        }
        if fields.is_empty() {
            return Err(bad(match only {
                Some(f) => format!("no list<float> column named {f:?}"),
                None => "no list<float> column named like a field".into(),
            }));
        }
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ParquetSource {
            reader,
            rows,
            key_column: key_column.to_owned(),
            fields,
        })
    }
}

/// One field column of a batch: each row's values, or none.
struct Vectors<'a> {
    list: &'a ArrayRef,
    /// (start, len) of each row within `values`, computed from offsets or the fixed size.
    offsets: Box<dyn Fn(usize) -> (usize, usize) + 'a>,
    values: &'a ArrayRef,
}

impl<'a> Vectors<'a> {
    fn new(list: &'a ArrayRef) -> Option<Vectors<'a>> {
        if let Some(l) = list.as_list_opt::<i32>() {
            let o = l.value_offsets();
            return Some(Vectors {
                list,
                offsets: Box::new(move |i| (o[i] as usize, (o[i + 1] - o[i]) as usize)),
                values: l.values(),
            });
        }
        if let Some(l) = list.as_list_opt::<i64>() {
            let o = l.value_offsets();
            return Some(Vectors {
                list,
                offsets: Box::new(move |i| (o[i] as usize, (o[i + 1] - o[i]) as usize)),
                values: l.values(),
            });
        }
        let l = list.as_fixed_size_list_opt()?;
        let n = l.value_length() as usize;
        Some(Vectors {
            list,
            offsets: Box::new(move |i| (i * n, n)),
            values: l.values(),
        })
    }

    /// Row `i`'s values as f32 (borrowed when they are f32 already), or `None` for a null.
    fn row(&self, i: usize) -> Result<Option<Cow<'a, [f32]>>, String> {
        if self.list.is_null(i) {
            return Ok(None);
        }
        let (start, len) = (self.offsets)(i);
        if self.values.null_count() > 0 && (start..start + len).any(|j| self.values.is_null(j)) {
            return Err("a value is null".into());
        }
        if let Some(v) = self.values.as_primitive_opt::<Float32Type>() {
            return Ok(Some(Cow::Borrowed(&v.values()[start..start + len])));
        }
        if let Some(v) = self.values.as_primitive_opt::<Float64Type>() {
            return Ok(Some(Cow::Owned(
                v.values()[start..start + len]
                    .iter()
                    .map(|x| *x as f32)
                    .collect(),
            )));
        }
        if let Some(v) = self.values.as_primitive_opt::<Float16Type>() {
            return Ok(Some(Cow::Owned(
                v.values()[start..start + len]
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
            )));
        }
        Err("values are not floats".into())
    }
}

fn key_at(column: &ArrayRef, i: usize) -> Option<&str> {
    if column.is_null(i) {
        return None;
    }
    if let Some(s) = column.as_string_opt::<i32>() {
        return Some(s.value(i));
    }
    if let Some(s) = column.as_string_opt::<i64>() {
        return Some(s.value(i));
    }
    column.as_string_view_opt().map(|s| s.value(i))
}

impl ParquetSource {
    fn batch(&self, batch: &RecordBatch, first_row: u64, sink: &mut Sink) -> Result<(), LoadError> {
        let missing = |name: &str| LoadError::file(format!("record batch without column {name:?}"));
        let keys = batch
            .column_by_name(&self.key_column)
            .ok_or_else(|| missing(&self.key_column))?;
        let columns: Vec<(&str, Vectors)> = self
            .fields
            .iter()
            .map(|name| {
                let column = batch.column_by_name(name).ok_or_else(|| missing(name))?;
                let vectors = Vectors::new(column)
                    .ok_or_else(|| LoadError::file(format!("column {name:?} is not a list")))?;
                Ok((name.as_str(), vectors))
            })
            .collect::<Result<_, LoadError>>()?;
        let mut values: Vec<(&str, Cow<[f32]>)> = Vec::with_capacity(columns.len());
        for i in 0..batch.num_rows() {
            let row = first_row + i as u64;
            let Some(key) = key_at(keys, i) else {
                sink.bad(row, format!("the key column {:?} is null", self.key_column))?;
                continue;
            };
            values.clear();
            let mut error = None;
            for (name, vectors) in &columns {
                match vectors.row(i) {
                    Ok(Some(v)) => values.push((name, v)),
                    Ok(None) => {}
                    Err(e) => {
                        error = Some(format!("field {name:?}: {e}"));
                        break;
                    }
                }
            }
            match error {
                Some(e) => sink.bad(row, e)?,
                None => {
                    let fields: Vec<(&str, &[f32])> =
                        values.iter().map(|(n, v)| (*n, v.as_ref())).collect();
                    sink.row(row, key, &fields)?;
                }
            }
        }
        Ok(())
    }
}

impl Source for ParquetSource {
    fn rows(&self) -> Option<u64> {
        Some(self.rows)
    }

    fn read(&mut self, sink: &mut Sink) -> Result<(), LoadError> {
        let mut row = 0u64;
        while let Some(batch) = self.reader.next() {
            let batch = batch.map_err(|e| LoadError::file(format!("row {row}: {e}")))?;
            self.batch(&batch, row, sink)?;
            row += batch.num_rows() as u64;
        }
        Ok(())
    }
}
