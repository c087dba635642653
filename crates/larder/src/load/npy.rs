//! NPY: a 2-D little-endian f32 (`<f4`) or f16 (`<f2`) array in C order, one row per entity,
//! for one field. Streamed row by row.
//!
//! The header is parsed here rather than with `npyz` or `ndarray-npy`: those read the whole
//! array into memory (or need `ndarray`), and the part needed, the `descr`, `fortran_order`
//! and `shape` of a Python dict literal, is a few lines.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::keys::Keys;
use super::{check_key_count, Element, LoadError, Sink, Source};

pub(crate) struct NpySource {
    path: PathBuf,
    reader: BufReader<File>,
    element: Element,
    rows: u64,
    dim: usize,
    field: String,
    keys: Keys,
}

/// `(element, rows, dim)` from the header dict, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(header: &str) -> Result<(Element, u64, usize), String> {
    let value = |name: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{name}'"))
            .ok_or_else(|| format!("the header has no {name:?}"))?;
        let rest = &header[at + name.len() + 2..];
        let rest = rest
            .trim_start()
            .strip_prefix(':')
            .ok_or("malformed header")?;
        Ok(rest.trim_start())
    };
    let descr = value("descr")?;
    let element = if descr.starts_with("'<f4'") {
        Element::F32
    } else if descr.starts_with("'<f2'") {
        Element::F16
    } else {
        let shown: String = descr.chars().take(8).collect();
        return Err(format!(
            "dtype {shown}…: expected little-endian float32 ('<f4') or float16 ('<f2')"
        ));
    };
    if value("fortran_order")?.starts_with("True") {
        return Err(
            "the array is in Fortran order; save it in C order (np.ascontiguousarray)".into(),
        );
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let dims: Vec<u64> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape ({inner})")))
        .collect::<Result<_, _>>()?;
    match dims.as_slice() {
        [rows, dim] => Ok((element, *rows, *dim as usize)),
        _ => Err(format!(
            "the array has shape ({inner}); expected 2-D (rows, dim)"
        )),
    }
}

impl NpySource {
    pub(crate) fn open(path: &Path, field: String, keys: Keys) -> Result<Self, LoadError> {
        let bad = |why: String| {
            LoadError::file(format!(
                "{}: not a loadable NPY file: {why}",
                path.display()
            ))
        };
        let file =
            File::open(path).map_err(|e| LoadError::file(format!("{}: {e}", path.display())))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|e| bad(e.to_string()))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(bad("no NPY magic".into()));
        }
        let header_len = match magic[6] {
            1 => {
                let mut n = [0u8; 2];
                reader.read_exact(&mut n).map_err(|e| bad(e.to_string()))?;
                u16::from_le_bytes(n) as usize
            }
            2 | 3 => {
                let mut n = [0u8; 4];
                reader.read_exact(&mut n).map_err(|e| bad(e.to_string()))?;
                u32::from_le_bytes(n) as usize
            }
            v => return Err(bad(format!("format version {v}"))),
        };
        let mut header = vec![0u8; header_len];
        reader
            .read_exact(&mut header)
            .map_err(|e| bad(e.to_string()))?;
        let header = String::from_utf8_lossy(&header);
        let (element, rows, dim) = parse_header(&header).map_err(bad)?;
        check_key_count(&keys, rows, path)?;
        Ok(NpySource {
            path: path.to_owned(),
            reader,
            element,
            rows,
            dim,
            field,
            keys,
        })
    }
}

impl Source for NpySource {
    fn rows(&self) -> Option<u64> {
        Some(self.rows)
    }

    fn read(&mut self, sink: &mut Sink) -> Result<(), LoadError> {
        let mut raw = vec![0u8; self.dim * self.element.size()];
        let mut values = vec![0f32; self.dim];
        for row in 0..self.rows {
            self.reader
                .read_exact(&mut raw)
                .map_err(|e| LoadError::file(format!("{}: row {row}: {e}", self.path.display())))?;
            self.element.decode(&raw, &mut values);
            let key = self.keys.key(row);
            sink.row(row, &key, &[(self.field.as_str(), values.as_slice())])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 768), }"),
            Ok((Element::F32, 3, 768))
        );
        assert_eq!(
            parse_header("{'descr': '<f2', 'fortran_order': False, 'shape': (10,4)}"),
            Ok((Element::F16, 10, 4))
        );
        assert!(
            parse_header("{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4), }").is_err()
        );
        assert!(
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }").is_err()
        );
        assert!(
            parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }").is_err()
        );
        assert!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (12,), }").is_err()
        );
    }
}
