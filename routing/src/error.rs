//! Configuration errors that name the field and the reason.

use std::fmt;

/// A rejected configuration or table: `field` is a path such as
/// `destination.strip_suffixes[1]`, `reason` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses JSON into `T`; an error names the field as a path (e.g.
/// `table.entries[0].routing_key`), or `root` when the document as a whole is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    root: &str,
) -> Result<T, ConfigError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        // The root, or a path through an empty key (`{"": 1}`), is named by `root`.
        let field = match e.path().to_string() {
            path if path == "." || path.is_empty() => root.to_owned(),
            path => path,
        };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}
