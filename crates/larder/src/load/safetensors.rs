//! safetensors: one 2-D tensor `[rows, dim]` per field, named like the field, in F32, F16 or
//! BF16; keys as for NPY. Larder's own lookup answer loads too: a `F.present` (U8) tensor
//! marks which rows of `F` are real, and other `F.*` tensors are skipped.
//!
//! The header is read with the `safetensors` crate's `Metadata`; the tensors are then streamed
//! row by row from their offsets, one reader per tensor, rather than loading (or memory-mapping,
//! which needs `unsafe`) the whole file.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use larder_store::NamespaceSchema;
use safetensors::tensor::Metadata;
use safetensors::Dtype;

use super::keys::Keys;
use super::{check_key_count, Element, LoadError, Sink, Source};

struct Tensor {
    field: String,
    element: Element,
    dim: usize,
    reader: BufReader<File>,
    present: Option<BufReader<File>>,
}

pub(crate) struct SafetensorsSource {
    path: PathBuf,
    rows: u64,
    tensors: Vec<Tensor>,
    keys: Keys,
}

impl SafetensorsSource {
    pub(crate) fn open(
        path: &Path,
        only: Option<&str>,
        schema: &NamespaceSchema,
        keys: Keys,
    ) -> Result<Self, LoadError> {
        let bad = |why: String| {
            LoadError::file(format!(
                "{}: not a loadable safetensors file: {why}",
                path.display()
            ))
        };
        let open =
            || File::open(path).map_err(|e| LoadError::file(format!("{}: {e}", path.display())));
        let mut file = open()?;
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| bad(e.to_string()))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > 100 << 20 {
            return Err(bad(format!("a header of {header_len} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(e.to_string()))?;
        let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let reader_at = |offset: usize| -> Result<BufReader<File>, LoadError> {
            let mut f = open()?;
            f.seek(SeekFrom::Start(data_start + offset as u64))
                .map_err(|e| bad(e.to_string()))?;
            Ok(BufReader::with_capacity(1 << 20, f))
        };
        let mut names: Vec<String> = metadata.tensors().keys().cloned().collect();
        names.sort();
        let mut rows: Option<u64> = None;
        let mut tensors = Vec::new();
        for name in names.iter().filter(|n| !n.contains('.')) {
            if only.is_some_and(|f| f != name) {
                continue;
            }
            let spec = schema.fields.get(name).ok_or_else(|| {
                bad(format!(
                    "tensor {name:?} is not a field of the namespace (fields: {})",
                    schema.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let info = metadata
                .info(name)
                .ok_or_else(|| bad(format!("no tensor {name:?}")))?;
            let [n, dim] = info.shape[..] else {
                return Err(bad(format!(
                    "tensor {name:?} has shape {:?}; expected [rows, dim]",
                    info.shape
                )));
            };
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(bad(format!(
                    "tensor {name:?} is {:?}; expected F32, F16 or BF16",
                    info.dtype
                )));
            }
            if dim != spec.dim {
                return Err(bad(format!(
                    "tensor {name:?} has {dim} columns; the field has dim {}",
                    spec.dim
                )));
            }
            match rows {
                Some(r) if r != n as u64 => {
                    return Err(bad(format!("tensor {name:?} has {n} rows, another {r}")))
                }
                _ => rows = Some(n as u64),
            }
            let present = match metadata.info(&format!("{name}.present")) {
                Some(p) if p.dtype == Dtype::U8 && p.shape == [n] => {
                    Some(reader_at(p.data_offsets.0)?)
                }
                Some(_) => return Err(bad(format!("{name}.present is not U8 [{n}]"))),
                None => None,
            };
            let element = match info.dtype {
                Dtype::F32 => Element::F32,
                Dtype::F16 => Element::F16,
                _ => Element::Bf16,
            };
            tensors.push(Tensor {
                field: name.clone(),
                element,
                dim,
                reader: reader_at(info.data_offsets.0)?,
                present,
            });
        }
        if tensors.is_empty() {
            return Err(bad(match only {
                Some(f) => format!("no tensor named {f:?}"),
                None => "no tensor named like a field".into(),
            }));
        }
        let rows = rows.unwrap_or(0);
        check_key_count(&keys, rows, path)?;
        Ok(SafetensorsSource {
            path: path.to_owned(),
            rows,
            tensors,
            keys,
        })
    }
}

impl Source for SafetensorsSource {
    fn rows(&self) -> Option<u64> {
        Some(self.rows)
    }

    fn read(&mut self, sink: &mut Sink) -> Result<(), LoadError> {
        let mut values: Vec<Vec<f32>> = self.tensors.iter().map(|t| vec![0f32; t.dim]).collect();
        let mut raw: Vec<u8> = Vec::new();
        for row in 0..self.rows {
            let mut real = vec![true; self.tensors.len()];
            for (i, tensor) in self.tensors.iter_mut().enumerate() {
                raw.resize(tensor.dim * tensor.element.size(), 0);
                let io = |e: std::io::Error| {
                    LoadError::file(format!("{}: row {row}: {e}", self.path.display()))
                };
                tensor.reader.read_exact(&mut raw).map_err(io)?;
                if let Some(present) = &mut tensor.present {
                    let mut flag = [0u8; 1];
                    present.read_exact(&mut flag).map_err(io)?;
                    real[i] = flag[0] != 0;
                }
                tensor.element.decode(&raw, &mut values[i]);
            }
            let fields: Vec<(&str, &[f32])> = self
                .tensors
                .iter()
                .zip(&values)
                .zip(&real)
                .filter(|(_, real)| **real)
                .map(|((t, v), _)| (t.field.as_str(), v.as_slice()))
                .collect();
            let key = self.keys.key(row);
            sink.row(row, &key, &fields)?;
        }
        Ok(())
    }
}
