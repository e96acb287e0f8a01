//! Loading TOML configs with errors that fit on one line and point at the line at fault.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A config that cannot be read or cannot build a model; the message names the file, the line
/// or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Parses TOML into `T`; a syntax error, an unknown key or a mistyped value is reported as
/// ``line N: `the line`: what is wrong``.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|err| {
        let reason = err.message().replace('\n', " ");
        match err.span() {
            Some(span) => {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                format!("line {line_no}: `{line}`: {reason}")
            }
            None => reason,
        }
    })
}

/// Reads a TOML file into `T`, then runs `validate`; every error names the file.
pub fn load_toml<T: DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: shown.clone(),
        source,
    })?;
    let value: T = parse_toml(&text).map_err(|message| ConfigError::Parse {
        path: shown.clone(),
        message,
    })?;
    validate(&value).map_err(|message| ConfigError::Parse {
        path: shown,
        message,
    })?;
    Ok(value)
}

/// A config that can check itself after parsing.
pub trait Validate {
    /// Checks the values that would otherwise fail deep inside a tensor op.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads a TOML config file and validates it; errors name the file and the line or field.
pub fn load_config<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    load_toml(path, |config: &T| {
        config.validate().map_err(|e| e.to_string())
    })
}

/// Parses TOML config text and validates it.
pub fn config_from_toml<T: DeserializeOwned + Validate>(text: &str) -> Result<T, ConfigError> {
    let config: T = parse_toml(text).map_err(|message| ConfigError::Parse {
        path: "<config>".into(),
        message,
    })?;
    config.validate()?;
    Ok(config)
}

/// Config checks shared by the model families; each error names the field.
pub mod check {
    use super::ConfigError;

    /// Every `(field, value)` is at least 1.
    pub fn at_least_one(fields: &[(&str, usize)]) -> Result<(), ConfigError> {
        match fields.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
            None => Ok(()),
        }
    }

    /// `(width_name, width)` splits evenly into `(heads_name, heads)` heads.
    pub fn divisible(width: (&str, usize), heads: (&str, usize)) -> Result<(), ConfigError> {
        if width.1.is_multiple_of(heads.1) {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{} {} is not divisible by {} {}",
                width.0, width.1, heads.0, heads.1
            )))
        }
    }

    /// A dropout probability in [0, 1).
    pub fn probability(name: &str, p: f64) -> Result<(), ConfigError> {
        if (0.0..1.0).contains(&p) {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{name} must be in [0, 1), got {p}"
            )))
        }
    }

    /// A strictly positive number (not NaN).
    pub fn positive(name: &str, x: f64) -> Result<(), ConfigError> {
        if x > 0.0 {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{name} must be positive, got {x}"
            )))
        }
    }
}
