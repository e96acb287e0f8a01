//! Model configs by name: the TOMLs of `configs/models/` are compiled in, so
//! `--model-config gpt2-small` (or `bert-mini`) works from any directory; a path to a TOML
//! works too.

use std::path::Path;

use anyhow::{Result, bail};
use ember_model::bert::BertConfig;
use ember_model::config::ConfigError;
use ember_model::gpt::GptConfig;

const GPT_BUILT_IN: [(&str, &str); 5] = [
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

const BERT_BUILT_IN: [(&str, &str); 3] = [
    (
        "bert-tiny",
        include_str!("../../../configs/models/bert-tiny.toml"),
    ),
    (
        "bert-mini",
        include_str!("../../../configs/models/bert-mini.toml"),
    ),
    (
        "bert-base",
        include_str!("../../../configs/models/bert-base.toml"),
    ),
];

/// A GPT config from a file (absolute, relative to the working directory, or relative to the
/// recipe that names it) or a built-in name.
pub fn load_gpt_config(name_or_path: &str, recipe: Option<&Path>) -> Result<GptConfig> {
    load_config(
        name_or_path,
        recipe,
        &GPT_BUILT_IN,
        GptConfig::load,
        GptConfig::from_toml,
    )
}

/// A BERT config, found the same way as [`load_gpt_config`].
pub fn load_bert_config(name_or_path: &str, recipe: Option<&Path>) -> Result<BertConfig> {
    load_config(
        name_or_path,
        recipe,
        &BERT_BUILT_IN,
        BertConfig::load,
        BertConfig::from_toml,
    )
}

fn load_config<C>(
    name_or_path: &str,
    recipe: Option<&Path>,
    built_in: &[(&str, &str)],
    from_file: fn(&Path) -> Result<C, ConfigError>,
    from_text: fn(&str) -> Result<C, ConfigError>,
) -> Result<C> {
    let path = Path::new(name_or_path);
    let beside_recipe = recipe
        .and_then(Path::parent)
        .map(|dir| dir.join(path))
        .filter(|p| p.is_file());
    if path.is_file() {
        return Ok(from_file(path)?);
    }
    if let Some(path) = beside_recipe {
        return Ok(from_file(&path)?);
    }
    match built_in.iter().find(|(name, _)| *name == name_or_path) {
        Some((name, text)) => {
            from_text(text).map_err(|e| anyhow::anyhow!("built-in model config {name}: {e}"))
        }
        None => bail!(
            "model config `{name_or_path}`: no such file, and not a built-in name ({})",
            built_in
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
