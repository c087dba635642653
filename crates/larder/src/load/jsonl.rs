//! JSONL: one upsert entity per line, `{"key": "…", "fields": {"f": [..]}}`, as in the body of
//! `POST /v1/namespaces/{ns}/entities`. Row N is line N (0-based).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::{LoadError, Sink, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    key: String,
    fields: BTreeMap<String, Vec<f32>>,
}

pub(crate) struct JsonlSource {
    reader: BufReader<File>,
}

impl JsonlSource {
    pub(crate) fn open(path: &Path) -> Result<Self, LoadError> {
        let file =
            File::open(path).map_err(|e| LoadError::file(format!("{}: {e}", path.display())))?;
        Ok(JsonlSource {
            reader: BufReader::with_capacity(1 << 20, file),
        })
    }
}

impl Source for JsonlSource {
    fn rows(&self) -> Option<u64> {
        None
    }

    fn read(&mut self, sink: &mut Sink) -> Result<(), LoadError> {
        let mut line = String::new();
        let mut row = 0u64;
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| LoadError::file(format!("line {row}: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            let text = line.trim_end_matches(['\n', '\r']);
            match serde_json::from_str::<Line>(text) {
                Ok(entity) => {
                    let fields: Vec<(&str, &[f32])> = entity
                        .fields
                        .iter()
                        .map(|(name, values)| (name.as_str(), values.as_slice()))
                        .collect();
                    sink.row(row, &entity.key, &fields)?;
                }
                Err(error) => sink.bad(row, format!("not an upsert entity: {error}"))?,
            }
            row += 1;
        }
    }
}
