//! Model configs by name: the TOMLs of `configs/models/` are compiled in, so
//! `--model-config gpt2-small` works from any directory; a path to a TOML works too.

use std::path::Path;

use anyhow::{Result, bail};
use ember_model::gpt::GptConfig;

const BUILT_IN: [(&str, &str); 5] = [
    (
        "gpt-tiny",
        include_str!("../../../configs/models/gpt-tiny.toml"),
    ),
    (
        "gpt2-small",
        include_str!("../../../configs/models/gpt2-small.toml"),
    ),
    (
        "gpt2-medium",
        include_str!("../../../configs/models/gpt2-medium.toml"),
    ),
    (
        "gpt2-large",
        include_str!("../../../configs/models/gpt2-large.toml"),
    ),
    (
        "gpt2-xl",
        include_str!("../../../configs/models/gpt2-xl.toml"),
    ),
];

/// A GPT config from a file (absolute, relative to the working directory, or relative to the
/// recipe that names it) or a built-in name.
pub fn load_gpt_config(name_or_path: &str, recipe: Option<&Path>) -> Result<GptConfig> {
    let path = Path::new(name_or_path);
    let beside_recipe = recipe
        .and_then(Path::parent)
        .map(|dir| dir.join(path))
        .filter(|p| p.is_file());
    if path.is_file() {
        return Ok(GptConfig::load(path)?);
    }
    if let Some(path) = beside_recipe {
        return Ok(GptConfig::load(&path)?);
    }
    match BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
        Some((name, text)) => GptConfig::from_toml(text)
            .map_err(|e| anyhow::anyhow!("built-in model config {name}: {e}")),
        None => bail!(
            "model config `{name_or_path}`: no such file, and not a built-in name ({})",
            BUILT_IN.map(|(name, _)| name).join(", ")
        ),
    }
}
