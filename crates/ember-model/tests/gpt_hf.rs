//! HuggingFace GPT-2 import/export and KV-cache decoding, checked against
//! `../shared/fixtures/tiny-gpt2` (a random `GPT2LMHeadModel` whose outputs transformers
//! computed, see that folder's README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use ember_model::generate::{GenerateOptions, generate};
use ember_model::gpt::{Gpt, GptConfig};
use ember_model::gpt_hf::{HfGpt2, export_gpt2};
use ember_model::loss::lm_loss;
use ember_model::sampling::SamplingConfig;
use ember_model::weights::{HostTensor, TensorSet, write_safetensors};
use serde_json::Value;

mod common;
use common::*;

fn tiny_gpt2() -> PathBuf {
    fixtures().join("tiny-gpt2")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(tiny_gpt2().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_fixture(device: &Device) -> (HfGpt2, Gpt) {
    let hf = HfGpt2::open(&tiny_gpt2()).unwrap();
    let model = hf.load(device, None).unwrap();
    (hf, model)
}

fn greedy(max_new_tokens: usize, use_cache: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: SamplingConfig::default(),
        eos_id: None,
        seed: 0,
        use_cache,
        threads: 1,
        read_every: 1,
        vocab_limit: None,
    }
}

#[test]
fn config_json_maps_onto_the_gpt_config() {
    let (hf, _) = load_fixture(&Device::flex());
    let want = GptConfig {
        vocab_size: 1024,
        context_length: 64,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: true,
        tie_weights: true,
        layer_norm_eps: 1e-5,
        emb_init_std: 0.02,
    };
    assert_eq!(hf.config, want);
    assert_eq!(hf.eos_token_id, Some(1023));
    assert!(hf.unused_tensors().is_empty(), "{:?}", hf.unused_tensors());
}

#[test]
fn logits_losses_and_hidden_states_match_transformers() {
    let device = Device::flex();
    let (_, model) = load_fixture(&device);
    let reference = reference();
    let ids = int_rows(&reference["input_ids"]);
    let input = ids_tensor(&ids, &device);

    let logits = model.forward(input.clone());
    let (shape, want) = ref_tensor(&reference["logits"]);
    assert_eq!(logits.dims().to_vec(), shape);
    assert_close("logits", &values(logits.clone()), &want, 1e-4);

    let (_, want_hidden) = ref_tensor(&reference["hidden_states"]["hidden_states_2"]);
    assert_close(
        "hidden states after ln_f",
        &values(model.hidden_states(input.clone())),
        &want_hidden,
        1e-4,
    );

    // HF shifts inside: logits[:, t] is scored against labels[:, t + 1].
    let [batch, seq, _] = logits.dims();
    let shifted = |labels: &[Vec<i64>]| {
        let targets: Vec<Vec<i64>> = labels.iter().map(|row| row[1..].to_vec()).collect();
        let loss = lm_loss(
            logits.clone().slice(s![.., 0..seq - 1, ..]),
            ids_tensor(&targets, &device),
        );
        f64::from(loss.into_scalar::<f32>())
    };
    assert_eq!(batch, 2);
    for (name, labels) in [
        ("loss_labels_eq_input_ids", ids.clone()),
        ("loss_masked", int_rows(&reference["loss_masked"]["labels"])),
    ] {
        let got = shifted(&labels);
        let want = reference[name]["value"].as_f64().unwrap();
        assert!(
            ((got - want) / want).abs() < 1e-5,
            "{name}: {got} but transformers gives {want}"
        );
    }
}

#[test]
fn greedy_decoding_matches_transformers_with_and_without_cache() {
    let device = Device::flex();
    let (_, model) = load_fixture(&device);
    let reference = reference();
    let generation = &reference["greedy_generation"];
    let prompt: Vec<u32> = int_rows(&generation["prompt"])[0]
        .iter()
        .map(|&t| t as u32)
        .collect();
    let want: Vec<u32> = generation["new_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    // threads = 3: every product of a step cut into column slices computed side by side;
    // read_every = 5: tokens picked on the device, read back every 5 steps.
    for (use_cache, threads, read_every) in [
        (true, 1, 1),
        (true, 3, 1),
        (false, 1, 1),
        (false, 3, 1),
        (true, 1, 5),
    ] {
        let options = GenerateOptions {
            threads,
            read_every,
            ..greedy(16, use_cache)
        };
        let out = generate(&model, std::slice::from_ref(&prompt), &options, |_, _| {}).unwrap();
        assert_eq!(
            out[0].tokens, want,
            "use_cache = {use_cache}, threads {threads}, read_every {read_every}"
        );
    }
}

#[test]
fn a_padded_batch_decodes_each_prompt_as_if_alone_also_past_the_context() {
    let device = Device::flex();
    let hf = HfGpt2::open(&tiny_gpt2()).unwrap();
    // A 16-position window (the first 16 rows of wpe) so that 30 new tokens slide it.
    let model = hf.load(&device, Some(16)).unwrap();
    assert_eq!(model.context_length(), 16);
    let reference = reference();
    let ids: Vec<Vec<u32>> = int_rows(&reference["input_ids"])
        .iter()
        .map(|row| row.iter().map(|&t| t as u32).collect())
        .collect();
    let prompts = vec![
        ids[0][..3].to_vec(),
        ids[1].clone(),
        ids[0][5..12].to_vec(),
        vec![ids[1][4]],
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            generate(
                &model,
                std::slice::from_ref(p),
                &greedy(30, false),
                |_, _| {},
            )
            .unwrap()[0]
                .tokens
                .clone()
        })
        .collect();
    // read_every = 4 with the cache: the window slides after a few steps, which reads the
    // pending tokens first.
    for (use_cache, threads, read_every) in [
        (true, 1, 1),
        (true, 2, 1),
        (false, 1, 1),
        (true, 1, 4),
        (false, 1, 4),
    ] {
        let options = GenerateOptions {
            threads,
            read_every,
            ..greedy(30, use_cache)
        };
        let batch = generate(&model, &prompts, &options, |_, _| {}).unwrap();
        for (i, result) in batch.iter().enumerate() {
            assert_eq!(
                result.tokens, alone[i],
                "prompt {i}, use_cache = {use_cache}, threads {threads}, read_every {read_every}"
            );
        }
    }
    // Each row stops at its own end-of-text while the others go on: eos = row 0's fourth new
    // token, then row 2's seventh. Read every 4 steps, a row decodes past its end until the
    // next read; what it decoded there must be neither returned nor streamed.
    for eos in [alone[0][3], alone[2][6]] {
        for read_every in [1, 4] {
            let options = GenerateOptions {
                eos_id: Some(eos),
                read_every,
                ..greedy(30, true)
            };
            let mut streamed = vec![Vec::new(); prompts.len()];
            let stopped = generate(&model, &prompts, &options, |i, t| streamed[i].push(t)).unwrap();
            for (i, result) in stopped.iter().enumerate() {
                let until_eos: Vec<u32> =
                    alone[i].iter().copied().take_while(|&t| t != eos).collect();
                assert_eq!(
                    result.tokens, until_eos,
                    "prompt {i} with eos {eos}, read_every {read_every}"
                );
                assert_eq!(streamed[i], until_eos, "streamed, prompt {i}");
            }
        }
    }
}

#[test]
fn export_then_import_is_bit_exact() {
    let device = Device::flex();
    let (hf, model) = load_fixture(&device);
    let dir = tempfile::tempdir().unwrap();
    export_gpt2(&model, &hf.config, hf.eos_token_id, dir.path()).unwrap();

    let original = TensorSet::open(&tiny_gpt2().join("model.safetensors")).unwrap();
    let exported = TensorSet::open(&dir.path().join("model.safetensors")).unwrap();
    let names: Vec<&str> = original.names().collect();
    assert_eq!(names, exported.names().collect::<Vec<_>>());
    for name in names {
        assert_eq!(
            original.read(name).unwrap(),
            exported.read(name).unwrap(),
            "{name}"
        );
    }
    let again = HfGpt2::open(dir.path()).unwrap();
    assert_eq!(again.config, hf.config);
    assert_eq!(again.eos_token_id, Some(1023));

    // An ember-trained shape: untied head, no qkv bias. The export writes lm_head.weight and a
    // zero c_attn bias; the re-imported model computes bit-identical logits.
    let config = GptConfig {
        vocab_size: 50,
        context_length: 12,
        emb_dim: 16,
        n_heads: 2,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_weights: false,
        layer_norm_eps: 1e-5,
        emb_init_std: 1.0,
    };
    device.seed(11);
    let untied = config.init(&device);
    let dir = tempfile::tempdir().unwrap();
    export_gpt2(&untied, &config, None, dir.path()).unwrap();
    let reopened = HfGpt2::open(dir.path()).unwrap();
    assert!(!reopened.config.tie_weights && reopened.config.qkv_bias);
    let loaded = reopened.load(&device, None).unwrap();
    let input = ids_tensor(&[vec![1, 7, 3, 49, 0, 22]], &device);
    assert_eq!(
        values(untied.forward(input.clone())),
        values(loaded.forward(input))
    );
}

#[test]
fn pytorch_bin_checkpoints_load_like_safetensors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-gpt2-bin");
    let bin = HfGpt2::open(&dir).unwrap();
    let safetensors = HfGpt2::open(&tiny_gpt2()).unwrap();
    assert_eq!(bin.config, safetensors.config);
    let device = Device::flex();
    let input = ids_tensor(&int_rows(&reference()["input_ids"]), &device);
    assert_eq!(
        values(bin.load(&device, None).unwrap().forward(input.clone())),
        values(safetensors.load(&device, None).unwrap().forward(input))
    );
}

#[test]
fn the_huggingface_cache_layout_is_found() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-gpt2");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_gpt2().join(file), snapshot.join(file)).unwrap();
    }
    let hf = HfGpt2::open(&repo).unwrap();
    assert_eq!(hf.dir, snapshot);
}

/// A copy of the fixture directory with its safetensors replaced by `bytes`.
fn with_weights(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_gpt2().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    dir
}

fn open_err(dir: &Path) -> String {
    match HfGpt2::open(dir).and_then(|hf| hf.load(&Device::flex(), None)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_checkpoints_are_one_line_errors_naming_the_fault() {
    let good = std::fs::read(tiny_gpt2().join("model.safetensors")).unwrap();

    let truncated = with_weights(&good[..good.len() - 100]);
    let err = open_err(truncated.path());
    assert!(err.contains("lie outside"), "{err}");

    let header_only = with_weights(&good[..6]);
    assert!(open_err(header_only.path()).contains("too short"));

    // A header that claims more bytes than the file has.
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(open_err(with_weights(&lying).path()).contains("header claims"));

    // Offsets beyond the file in an otherwise valid header.
    let header = br#"{"transformer.wte.weight":{"dtype":"F32","shape":[1024,32],"data_offsets":[0,99999999]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    let err = open_err(with_weights(&bytes).path());
    assert!(
        err.contains("`transformer.wte.weight`") && err.contains("lie outside"),
        "{err}"
    );

    // Shapes and sizes that disagree.
    let header = br#"{"transformer.wte.weight":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    let err = open_err(with_weights(&bytes).path());
    assert!(err.contains("needs more than 2^64 bytes"), "{err}");

    // A tensor of the wrong shape, and one missing.
    let original = TensorSet::open(&tiny_gpt2().join("model.safetensors")).unwrap();
    let mut tensors: BTreeMap<String, HostTensor> = original
        .names()
        .map(|n| (n.to_string(), original.read(n).unwrap()))
        .collect();
    tensors.insert(
        "transformer.h.1.attn.c_attn.weight".into(),
        HostTensor::new(vec![32, 64], vec![0.0; 32 * 64]),
    );
    tensors.remove("transformer.h.0.mlp.c_fc.bias");
    let dir = with_weights(b"");
    let path = dir.path().join("model.safetensors");
    write_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("missing tensor `transformer.h.0.mlp.c_fc.bias` (expected shape [128])"),
        "{err}"
    );
    tensors.insert(
        "transformer.h.0.mlp.c_fc.bias".into(),
        HostTensor::new(vec![128], vec![0.0; 128]),
    );
    write_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains(
            "tensor `transformer.h.1.attn.c_attn.weight`: expected shape [32, 96], found [32, 64]"
        ),
        "{err}"
    );

    // config.json problems name the field.
    let config = std::fs::read_to_string(tiny_gpt2().join("config.json")).unwrap();
    let dir = with_weights(&good);
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_embd\": 32,", ""),
    )
    .unwrap();
    assert!(open_err(dir.path()).contains("missing field `n_embd`"));
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"bert\""),
    )
    .unwrap();
    assert!(open_err(dir.path()).contains("model_type is \"bert\""));
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_head\": 4", "\"n_head\": 5"),
    )
    .unwrap();
    assert!(open_err(dir.path()).contains("not divisible by n_heads 5"));

    for err in [
        open_err(Path::new("/nonexistent/model")),
        open_err(&tiny_gpt2().join("config.json")),
        open_err(&fixtures()),
    ] {
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn all_four_gpt2_sizes_are_recognised() {
    use ember_model::gpt_hf::gpt2_size_name;
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models");
    for (file, name) in [
        ("gpt2-small", "gpt2-small (124M)"),
        ("gpt2-medium", "gpt2-medium (355M)"),
        ("gpt2-large", "gpt2-large (774M)"),
        ("gpt2-xl", "gpt2-xl (1558M)"),
    ] {
        let config = GptConfig::load(&configs.join(format!("{file}.toml"))).unwrap();
        assert_eq!(gpt2_size_name(&config), Some(name));
    }
    let (hf, _) = load_fixture(&Device::flex());
    assert_eq!(gpt2_size_name(&hf.config), None);
}
