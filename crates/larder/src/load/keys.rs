//! Entity keys for formats that carry none (NPY, safetensors): one per line of `--keys`, in
//! row order, else `row:N`. The keys file is read whole: keys are small beside vectors.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::LoadError;

pub(crate) struct Keys {
    file: Option<(PathBuf, Vec<String>)>,
}

impl Keys {
    pub(crate) fn open(path: Option<&Path>) -> Result<Keys, LoadError> {
        let Some(path) = path else {
            return Ok(Keys { file: None });
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::file(format!("--keys: cannot read {}: {e}", path.display())))?;
        // A final newline ends the last key; it does not start an empty one.
        let lines = text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .collect();
        Ok(Keys {
            file: Some((path.to_owned(), lines)),
        })
    }

    /// How many keys the file has, if one was given.
    pub(crate) fn count(&self) -> Option<u64> {
        self.file.as_ref().map(|(_, lines)| lines.len() as u64)
    }

    pub(crate) fn path_display(&self) -> String {
        self.file
            .as_ref()
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default()
    }

    /// The key of row `row`.
    pub(crate) fn key(&self, row: u64) -> Cow<'_, str> {
        match &self.file {
            Some((_, lines)) => lines
                .get(row as usize)
                .map(|k| Cow::Borrowed(k.as_str()))
                .unwrap_or(Cow::Borrowed("")),
            None => Cow::Owned(format!("row:{row}")),
        }
    }
}
