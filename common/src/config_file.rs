//! Reading TOML config files with errors that point at the place: file, line and key.
//!
//! Both `server.toml` and `client.toml` go through [`parse`], so an operator sees the same
//! `server.toml: line 12: tls.listen: invalid socket address syntax` shape for every mistake,
//! whether serde caught it while reading or a later check caught it with a [`toml::Spanned`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub struct ConfigFileError {
    pub path: PathBuf,
    /// 1-based line of the mistake, when known.
    pub line: Option<usize>,
    /// Dotted key path of the mistake (`tls.listen`), when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigFileError {
    /// An error about the whole file, such as a missing one.
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self { path: path.to_owned(), line: None, key: None, message: message.into() }
    }

    /// An error at `span` (byte offsets into `text`), with the line and key found from it.
    pub fn at(path: &Path, text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, key) = match span {
            Some(span) => {
                let (line, key) = locate(text, span.start);
                (Some(line), key)
            }
            None => (None, None),
        };
        Self { path: path.to_owned(), line, key, message: message.into() }
    }
}

/// Reads and deserializes a TOML file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigFileError::whole_file(path, format!("cannot read the file: {e}")))?;
    let value = parse(path, &text)?;
    Ok((value, text))
}

/// Deserializes TOML text; `path` is only for messages.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|e| ConfigFileError::at(path, text, e.span(), e.message().trim_end().to_owned()))
}

/// The 1-based line holding byte `offset`, and the dotted key assigned on that line if the
/// line is a plain `key = value` (prefixed with the most recent `[table]` header).
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=').map(|(key, _)| key.trim()).filter(|key| is_bare_key(key));
    let table = before[..line_start].lines().rev().find_map(|l| {
        // A header may carry a comment: `[users.carol] # the designer`.
        let l = l.split('#').next().unwrap_or("").trim();
        l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).map(|t| t.trim().to_owned())
    });
    let key = key.map(|key| match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    });
    (line_number, key)
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        tls: Tls,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Tls {
        listen: std::net::SocketAddr,
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let path = Path::new("server.toml");
        let text = "name = \"x\"\n\n[tls]\n# comment\nlisten = \"127.0.0.1:nope\"\n";
        let error = parse::<Sample>(path, text).unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(5), Some("tls.listen")));
        assert!(error.to_string().starts_with("server.toml: line 5: tls.listen: "), "{error}");

        let error = parse::<Sample>(path, "name = \"x\"\nbogus = 1\n[tls]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(2), Some("bogus")));
        assert!(error.message.contains("unknown field"), "{error}");
    }
}
