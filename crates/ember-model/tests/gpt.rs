//! GPT model: parameter counts, shapes, causality, determinism, and that it can learn.

use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use ember_model::gpt::{ConfigError, GptConfig};
use ember_model::loss::lm_loss;

mod common;
use common::tiny;

fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/models/{name}.toml"))
}

#[test]
fn gpt2_small_has_the_books_parameter_counts() {
    let mut config = GptConfig::load(&config_path("gpt2-small")).unwrap();
    config.qkv_bias = false;
    config.tie_weights = false;
    assert_eq!(config.num_params(), 163_009_536);
    config.tie_weights = true;
    assert_eq!(config.num_params(), 124_412_160);
    // The formula agrees with the modules actually built (on a small model, to stay fast).
    for tie_weights in [false, true] {
        for qkv_bias in [false, true] {
            let config = GptConfig {
                tie_weights,
                qkv_bias,
                ..tiny(97, 16)
            };
            assert_eq!(
                config.init(&Device::flex()).num_params(),
                config.num_params()
            );
        }
    }
}

#[test]
fn every_shipped_config_loads() {
    for (name, params) in [
        ("gpt2-small", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ] {
        let config = GptConfig::load(&config_path(name)).unwrap();
        // HF's published counts (tied head, qkv bias) of GPT2LMHeadModel.
        assert_eq!(config.num_params(), params, "{name}");
    }
    GptConfig::load(&config_path("gpt-tiny")).unwrap();
}

#[test]
fn invalid_configs_are_one_line_errors() {
    let base = "vocab_size = 10\ncontext_length = 8\nemb_dim = 12\nn_heads = 4\nn_layers = 1\n\
                drop_rate = 0.0\nqkv_bias = false\n";
    assert!(GptConfig::from_toml(base).is_ok());
    let cases = [
        (
            base.replace("n_heads = 4", "n_heads = 5"),
            "emb_dim 12 is not divisible by n_heads 5",
        ),
        (
            base.replace("n_layers = 1", "n_layers = 0"),
            "n_layers must be at least 1",
        ),
        (
            base.replace("context_length = 8", "context_length = 0"),
            "context_length must be at least 1",
        ),
        (
            base.replace("emb_dim = 12", "emb_dim = -12"),
            "line 3: `emb_dim = -12`: invalid value",
        ),
        (format!("{base}emb_size = 3\n"), "unknown field `emb_size`"),
        (
            base.replace("n_layers = 1\n", ""),
            "missing field `n_layers`",
        ),
    ];
    for (text, needle) in cases {
        let err = GptConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert!(!err.contains('\n'), "{err:?}");
    }
    let err = GptConfig::load(&PathBuf::from("/nonexistent/model.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().starts_with("/nonexistent/model.toml: "));
}

#[test]
fn logits_have_the_right_shape_and_never_see_the_future() {
    let device = Device::flex();
    device.seed(7);
    let model = tiny(50, 16).init(&device);
    let ids = Tensor::<2, Int>::random([2, 10], Distribution::Uniform(0.0, 50.0), &device);
    let logits = model.forward(ids.clone());
    assert_eq!(logits.dims(), [2, 10, 50]);
    for t in [0, 4, 9] {
        let changed = ids.clone().slice_assign(
            s![.., t..t + 1],
            Tensor::<2, Int>::from_data([[49], [48]], &device),
        );
        let other = model.forward(changed);
        if t > 0 {
            let before = logits.clone().slice(s![.., 0..t, ..]);
            let diff: f32 = (other.clone().slice(s![.., 0..t, ..]) - before)
                .abs()
                .max()
                .into_scalar();
            assert_eq!(diff, 0.0, "changing token {t} changed earlier logits");
        }
        let at: f32 = (other.slice(s![.., t..t + 1, ..])
            - logits.clone().slice(s![.., t..t + 1, ..]))
        .abs()
        .max()
        .into_scalar();
        assert!(at > 0.0, "changing token {t} did not change its own logits");
    }
}

/// Dropout (every site: embeddings, attention weights, residual branches) acts while training
/// — on an autodiff device — with a new mask each pass, and not at all for inference.
#[test]
fn dropout_acts_in_training_only() {
    let device = Device::flex().autodiff();
    device.seed(8);
    let model = GptConfig {
        drop_rate: 0.5,
        ..tiny(30, 8)
    }
    .init(&device);
    let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4, 5, 6]], &device);
    let logits = |model: &ember_model::gpt::Gpt, ids: Tensor<2, Int>| {
        model.forward(ids).into_data().try_to_vec::<f32>().unwrap()
    };
    let differ = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(a, b)| (a - b).abs() > 1e-4);
    let (first, second) = (logits(&model, ids.clone()), logits(&model, ids.clone()));
    assert!(
        differ(&first, &second),
        "two training passes drew the same masks"
    );
    // The same weights without autodiff: no dropout, and the same logits as with rate 0.
    let inference = model.valid();
    let plain_ids = ids.clone().inner();
    let plain = logits(&inference, plain_ids.clone());
    assert_eq!(plain, logits(&inference, plain_ids));
    assert!(differ(&first, &plain));
    let without = logits(&model.with_drop_rate(0.0), ids);
    assert!(
        !differ(&without, &plain),
        "rate 0 in training differs from inference"
    );
}

#[test]
fn a_tiny_model_overfits_a_short_text() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let text = b"Every effort moves you forward, one token at a time.";
    let ids: Vec<i64> = text.iter().map(|&b| i64::from(b)).collect();
    let n = ids.len() - 1;
    let inputs = Tensor::<1, Int>::from_data(&ids[..n], &device).reshape([1, n]);
    let targets = Tensor::<1, Int>::from_data(&ids[1..], &device).reshape([1, n]);
    let mut model = GptConfig {
        tie_weights: true,
        ..tiny(256, 64)
    }
    .init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut first = None;
    let mut loss_value = f32::NAN;
    for _ in 0..150 {
        let loss = lm_loss(model.forward(inputs.clone()), targets.clone());
        loss_value = loss.clone().into_scalar();
        first.get_or_insert(loss_value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let first = first.unwrap();
    assert!(
        first > 5.0,
        "initial loss {first} should be near ln(256) = 5.55"
    );
    assert!(
        loss_value < 0.05,
        "loss {first} → {loss_value} did not reach ~0"
    );
}

#[test]
fn generation_crops_long_prompts_stops_at_eos_and_repeats_with_a_seed() {
    use ember_model::generate::{GenerateOptions, generate};
    use ember_model::sampling::SamplingConfig;

    let device = Device::flex();
    device.seed(3);
    let model = tiny(30, 8).init(&device);
    let long: Vec<u32> = (0..20).map(|i| (i * 7) % 30).collect();
    let short = vec![1, 2, 3];
    let sampled = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: Some(5),
            ..Default::default()
        },
        eos_id: None,
        seed: 42,
        use_cache: true,
        threads: 1,
        read_every: 1,
        vocab_limit: None,
    };
    let run = |prompts: &[Vec<u32>], options: &GenerateOptions| {
        generate(&model, prompts, options, |_, _| {}).unwrap()
    };
    let a = run(&[long.clone(), short.clone()], &sampled);
    assert_eq!(a, run(&[long.clone(), short.clone()], &sampled));
    assert!(a[0].prompt_cropped && !a[1].prompt_cropped);
    assert_eq!((a[0].tokens.len(), a[1].tokens.len()), (12, 12));

    // A cropped prompt behaves like its last context_length tokens; batching changes nothing.
    let greedy = GenerateOptions {
        sampling: SamplingConfig::default(),
        ..sampled.clone()
    };
    let cropped = run(&[long[12..].to_vec()], &greedy);
    let both = run(&[long.clone(), long[12..].to_vec()], &greedy);
    assert_eq!(both[0].tokens, cropped[0].tokens);
    assert_eq!(both[1].tokens, cropped[0].tokens);

    // Each sequence stops at its own end-of-text token (which is not part of the output).
    let eos = run(std::slice::from_ref(&short), &greedy)[0].tokens[3];
    let stopped = run(
        std::slice::from_ref(&short),
        &GenerateOptions {
            eos_id: Some(eos),
            ..greedy.clone()
        },
    );
    assert!(!stopped[0].tokens.contains(&eos));
    assert!(stopped[0].tokens.len() <= 3);

    let err = generate(&model, &[vec![]], &greedy, |_, _| {}).unwrap_err();
    assert_eq!(err, "prompt 1 is empty: give at least one token");

    // With a tokenizer smaller than the vocabulary, ids it cannot decode are never chosen:
    // sampled, greedy on the host, and greedy picked on the device between reads.
    let unlimited: Vec<u32> = [&sampled, &greedy]
        .iter()
        .flat_map(|o| run(&[long.clone(), short.clone()], o))
        .flat_map(|g| g.tokens)
        .collect();
    assert!(unlimited.iter().any(|&t| t >= 6), "{unlimited:?}");
    for options in [
        &sampled,
        &greedy,
        &GenerateOptions {
            read_every: 4,
            ..greedy.clone()
        },
    ] {
        let limited = GenerateOptions {
            vocab_limit: Some(6),
            ..options.clone()
        };
        for generation in run(&[long.clone(), short.clone()], &limited) {
            assert_eq!(generation.tokens.len(), 12);
            assert!(generation.tokens.iter().all(|&t| t < 6), "{generation:?}");
        }
    }
}

#[test]
fn a_tiny_model_learns_to_copy_its_input() {
    // Unlike overfitting one sequence (which position embeddings alone can memorise), copying
    // random tokens needs the token embeddings and the path through every block.
    let device = Device::flex().autodiff();
    device.seed(5);
    let mut model = tiny(40, 16).init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut loss_value = f32::NAN;
    for step in 0..200u64 {
        let mut rng = ember_data::rng::SplitMix64::new(step);
        let ids: Vec<i64> = (0..8 * 16).map(|_| rng.below(40) as i64).collect();
        let inputs = Tensor::<1, Int>::from_data(ids.as_slice(), &device).reshape([8, 16]);
        let loss = lm_loss(model.forward(inputs.clone()), inputs);
        loss_value = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    assert!(
        loss_value < 0.1,
        "copy loss {loss_value} (ln 40 = 3.69 is chance)"
    );
}

#[test]
fn bf16_weights_decode_exactly_as_their_f32_widening() {
    use burn::tensor::DType;
    use ember_model::generate::{GenerateOptions, generate};
    use ember_model::gpt::KvCache;

    let device = Device::flex();
    device.seed(5);
    for tie_weights in [false, true] {
        let config = GptConfig {
            tie_weights,
            emb_init_std: 0.02,
            ..tiny(50, 32)
        };
        let bf16 = config.init(&device).with_weight_dtype(DType::BF16);
        assert_eq!(bf16.wte.weight.val().dtype(), DType::BF16);
        assert_eq!(bf16.h[0].attn.c_attn.weight.val().dtype(), DType::BF16);
        assert_eq!(bf16.wpe.weight.val().dtype(), DType::F32);
        let wide = bf16.clone().with_weight_dtype(DType::F32);
        assert_eq!(wide.wte.weight.val().dtype(), DType::F32);
        let bits = |x: Tensor<3>| {
            assert_eq!(x.dtype(), DType::F32);
            x.into_data().try_to_vec::<f32>().unwrap()
        };

        // 12 positions (products widened once, then gemm) and a cached prefill of 5 then one
        // more token (few-rows products reading bf16 as stored) on 2 threads.
        let ids = Tensor::<2, Int>::from_data([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]], &device);
        assert_eq!(bits(bf16.forward(ids.clone())), bits(wide.forward(ids)));
        let step = |model: &ember_model::gpt::Gpt| {
            let mut cache = KvCache::with_threads(2);
            let ids = Tensor::<2, Int>::from_data([[7, 0, 49, 12, 3]], &device);
            let positions = Tensor::<2, Int>::from_data([[0, 1, 2, 3, 4]], &device);
            let hide = Tensor::<2, Bool>::tril_mask([5, 5], 0, &device).reshape([1, 1, 5, 5]);
            let prefill = model.forward_cached(ids, positions, hide, &mut cache);
            let next = model.forward_cached(
                Tensor::from_data([[11]], &device),
                Tensor::from_data([[5]], &device),
                Tensor::<4, Bool>::from_data([[[[false; 6]]]], &device),
                &mut cache,
            );
            (
                bits(model.head_split(prefill, 2)),
                bits(model.head_split(next, 2)),
            )
        };
        assert_eq!(step(&bf16), step(&wide), "tie_weights {tie_weights}");

        let options = GenerateOptions {
            max_new_tokens: 20,
            sampling: Default::default(),
            eos_id: None,
            seed: 1,
            use_cache: true,
            threads: 2,
            read_every: 1,
            vocab_limit: None,
        };
        let prompts = [vec![1, 2, 3], (0..12).collect::<Vec<u32>>()];
        let run =
            |model: &ember_model::gpt::Gpt| generate(model, &prompts, &options, |_, _| {}).unwrap();
        assert_eq!(run(&bf16), run(&wide));
    }
}

#[test]
fn the_fused_causal_attention_computes_what_the_masked_cached_path_does() {
    use ember_model::gpt::KvCache;

    // The full forward takes the fused causal attention; a prefill through the cache takes the
    // composed attention with an explicit causal mask. 70 positions span two blocks of the
    // fused kernel's queries.
    let device = Device::flex();
    device.seed(9);
    let model = tiny(50, 80).init(&device);
    let seq = 70;
    let ids = Tensor::<2, Int>::random([2, seq], Distribution::Uniform(0.0, 50.0), &device);
    let fused = model.hidden_states(ids.clone());
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
        .reshape([1, seq])
        .expand([2, seq]);
    let hide = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &device).reshape([1, 1, seq, seq]);
    let masked = model.forward_cached(ids, positions, hide, &mut KvCache::with_threads(1));
    let diff: f32 = (fused - masked).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");
}
