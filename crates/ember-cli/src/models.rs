//! Model configs and recipes by name: the TOMLs of `configs/` are compiled in, so
//! `--model-config gpt2-small` and `--recipe the-verdict-124m` work from any directory (an
//! installed binary has no `configs/` beside it); a path to a TOML works too.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ember_model::bert::BertConfig;
use ember_model::config::{ConfigError, parse_toml};
use ember_model::gpt::GptConfig;
use serde::de::DeserializeOwned;

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
    let name = built_in_name(name_or_path, "models");
    match built_in.iter().find(|(built_in, _)| *built_in == name) {
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

/// The built-in name a config argument may stand for: `NAME`, `NAME.toml` or
/// `[./]configs/DIR/NAME.toml` (the file's path in this repository).
fn built_in_name<'a>(text: &'a str, dir: &str) -> &'a str {
    let text = text.strip_prefix("./").unwrap_or(text);
    let text = text
        .strip_prefix("configs/")
        .and_then(|rest| rest.strip_prefix(dir))
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(text);
    text.strip_suffix(".toml").unwrap_or(text)
}

/// What a recipe drives; each command reads its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeKind {
    GptPretrain,
    BertPretrain,
    Instruct,
    Seq2Seq,
}

impl RecipeKind {
    /// The directory of `configs/` its TOMLs live in.
    fn dir(self) -> &'static str {
        match self {
            RecipeKind::GptPretrain | RecipeKind::BertPretrain => "pretrain",
            RecipeKind::Instruct => "finetune",
            RecipeKind::Seq2Seq => "seq2seq",
        }
    }
}

/// The recipes of `configs/`, by kind and name (the file name without `.toml`).
const RECIPES: [(RecipeKind, &str, &str); 8] = [
    (
        RecipeKind::GptPretrain,
        "gpt-tiny-verdict",
        include_str!("../../../configs/pretrain/gpt-tiny-verdict.toml"),
    ),
    (
        RecipeKind::GptPretrain,
        "the-verdict-124m",
        include_str!("../../../configs/pretrain/the-verdict-124m.toml"),
    ),
    (
        RecipeKind::BertPretrain,
        "bert-mini-verdict",
        include_str!("../../../configs/pretrain/bert-mini-verdict.toml"),
    ),
    (
        RecipeKind::Instruct,
        "instruct",
        include_str!("../../../configs/finetune/instruct.toml"),
    ),
    (
        RecipeKind::Instruct,
        "instruct-tiny",
        include_str!("../../../configs/finetune/instruct-tiny.toml"),
    ),
    (
        RecipeKind::Instruct,
        "instruct-gpt2-medium",
        include_str!("../../../configs/finetune/instruct-gpt2-medium.toml"),
    ),
    (
        RecipeKind::Seq2Seq,
        "dates-transformer",
        include_str!("../../../configs/seq2seq/dates-transformer.toml"),
    ),
    (
        RecipeKind::Seq2Seq,
        "dates-lstm",
        include_str!("../../../configs/seq2seq/dates-lstm.toml"),
    ),
];

/// A recipe of `kind`: the TOML file at `name_or_path`, else the built-in recipe of that name
/// (`the-verdict-124m`, or its path in the repository, `configs/pretrain/the-verdict-124m.toml`,
/// so that the README's commands work from any directory); `None` is `default`, built in.
pub fn load_recipe<T: DeserializeOwned>(
    kind: RecipeKind,
    name_or_path: Option<&Path>,
    default: &str,
) -> Result<T> {
    let built_in = |name: &str| {
        RECIPES
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .map(|(_, _, text)| *text)
    };
    let Some(path) = name_or_path else {
        let text = built_in(default).expect("the default recipe is built in");
        return parse_toml(text).map_err(|e| anyhow::anyhow!("built-in recipe {default}: {e}"));
    };
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the recipe {}", path.display()))?;
        return parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let name = built_in_name(path.to_str().unwrap_or_default(), kind.dir());
    match built_in(name) {
        Some(recipe) => {
            parse_toml(recipe).map_err(|e| anyhow::anyhow!("built-in recipe {name}: {e}"))
        }
        None => bail!(
            "recipe {}: no such file, and not a built-in name ({})",
            path.display(),
            RECIPES
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every recipe of `configs/` parses as its command's recipe, and is found by its name and
    /// by its path in the repository from any directory.
    #[test]
    fn every_built_in_recipe_loads() {
        fn check<T: DeserializeOwned>(kind: RecipeKind) -> usize {
            let mut count = 0;
            for (k, name, _) in RECIPES.iter().filter(|(k, _, _)| *k == kind) {
                load_recipe::<T>(*k, Some(Path::new(name)), name)
                    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
                let in_repo = format!("configs/{}/{name}.toml", k.dir());
                for given in [
                    in_repo.clone(),
                    format!("./{in_repo}"),
                    format!("{name}.toml"),
                ] {
                    load_recipe::<T>(*k, Some(Path::new(&given)), name)
                        .unwrap_or_else(|e| panic!("{given}: {e:#}"));
                }
                count += 1;
            }
            count
        }
        let total = check::<crate::pretrain::Recipe>(RecipeKind::GptPretrain)
            + check::<crate::bert_pretrain::BertRecipe>(RecipeKind::BertPretrain)
            + check::<crate::instruct::InstructRecipe>(RecipeKind::Instruct)
            + check::<crate::seq2seq::Seq2SeqRecipe>(RecipeKind::Seq2Seq);
        assert_eq!(total, RECIPES.len());
        for given in [
            "gpt2-small",
            "gpt2-small.toml",
            "./configs/models/gpt2-small.toml",
        ] {
            let config = load_gpt_config(given, None).unwrap_or_else(|e| panic!("{given}: {e:#}"));
            assert_eq!(config.emb_dim, 768, "{given}");
        }
        // Every TOML under configs/ (but models/) is built in.
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut files = 0;
        for dir in ["pretrain", "finetune", "seq2seq"] {
            files += std::fs::read_dir(configs.join(dir)).unwrap().count();
        }
        assert_eq!(files, RECIPES.len());
        let err = load_recipe::<crate::pretrain::Recipe>(
            RecipeKind::GptPretrain,
            Some(Path::new("bert-mini-verdict")),
            "gpt-tiny-verdict",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("not a built-in name (gpt-tiny-verdict, the-verdict-124m)"),
            "{err}"
        );
    }
}
