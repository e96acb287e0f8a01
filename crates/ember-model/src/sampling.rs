//! Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus) and a
//! repetition penalty — the decoding options of the book's chapter 5 and of HF `generate`.
//!
//! Sampling runs on the host over one row of logits `[vocab]`: after the model's forward pass
//! this is a few hundred kilobytes per sequence, and keeping it in plain Rust makes every rule
//! testable on hand-made numbers.

use ember_data::rng::SplitMix64;

/// How to pick tokens. `temperature == 0` means greedy (argmax), whatever the other fields say.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (ties with the k-th are kept, as in the book).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// CTRL's penalty (> 1 discourages repeats): positive logits of seen tokens are divided by
    /// it, negative ones multiplied, as in HF's `RepetitionPenaltyLogitsProcessor`.
    pub repetition_penalty: f32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingConfig {
    /// Whether [`sample_next`] picks the raw logits' argmax (greedy, no repetition penalty): a
    /// choice the device can make without the logits coming back to the host.
    pub fn picks_argmax(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }

    /// One-line errors for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top-p must be in (0, 1], got {p}"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition penalty must be positive and finite, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Applies the repetition penalty to the logits of tokens in `seen`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let Some(logit) = logits.get_mut(id as usize) else {
            continue;
        };
        if std::mem::replace(&mut done[id as usize], true) {
            continue;
        }
        *logit = if *logit > 0.0 {
            *logit / penalty
        } else {
            *logit * penalty
        };
    }
}

/// Sets to −∞ every logit outside the top-k and outside the top-p nucleus.
pub fn filter_top_k_top_p(logits: &mut [f32], top_k: Option<usize>, top_p: Option<f32>) {
    if let Some(k) = top_k
        && k < logits.len()
    {
        let mut sorted: Vec<f32> = logits.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for logit in logits.iter_mut() {
            if *logit < threshold {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
    if let Some(p) = top_p {
        let probs = softmax(logits);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut cumulative = 0.0f64;
        let mut keep = order.len();
        for (rank, &id) in order.iter().enumerate() {
            cumulative += f64::from(probs[id]);
            if cumulative >= f64::from(p) {
                keep = rank + 1;
                break;
            }
        }
        for &id in &order[keep..] {
            logits[id] = f32::NEG_INFINITY;
        }
    }
}

/// Numerically stable softmax of one row.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token for one sequence: `logits` is the last position's row `[vocab]`,
/// `seen` the sequence so far (for the repetition penalty).
pub fn sample_next(
    mut logits: Vec<f32>,
    seen: &[u32],
    config: &SamplingConfig,
    rng: &mut SplitMix64,
) -> u32 {
    apply_repetition_penalty(&mut logits, seen, config.repetition_penalty);
    if config.temperature == 0.0 {
        return argmax(&logits);
    }
    for logit in logits.iter_mut() {
        *logit /= config.temperature;
    }
    filter_top_k_top_p(&mut logits, config.top_k, config.top_p);
    let probs = softmax(&logits);
    let mut u = rng.next_f64() as f32;
    for (id, &p) in probs.iter().enumerate() {
        if u < p {
            return id as u32;
        }
        u -= p;
    }
    // Rounding left a sliver of probability: take the most likely token.
    argmax(&logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(logits: &[f32]) -> Vec<usize> {
        (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect()
    }

    #[test]
    fn top_k_keeps_only_k_candidates() {
        let mut logits = vec![0.1, 3.0, -1.0, 2.0, 0.5, 2.5];
        filter_top_k_top_p(&mut logits, Some(3), None);
        assert_eq!(kept(&logits), [1, 3, 5]);
        let mut all = vec![1.0, 2.0];
        filter_top_k_top_p(&mut all, Some(5), None);
        assert_eq!(kept(&all), [0, 1]);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
        let probs = [0.15f32, 0.5, 0.05, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let nucleus = |p: f32| {
            let mut l = logits.clone();
            filter_top_k_top_p(&mut l, None, Some(p));
            kept(&l)
        };
        assert_eq!(nucleus(0.4), [1]);
        assert_eq!(nucleus(0.75), [1, 3]);
        assert_eq!(nucleus(0.9), [0, 1, 3]);
        assert_eq!(nucleus(1.0), [0, 1, 2, 3]);
    }

    #[test]
    fn repetition_penalty_follows_ctrl() {
        let mut logits = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn greedy_and_seeded_sampling_repeat() {
        let logits = vec![0.0, 1.0, 0.5, 0.9];
        let greedy = SamplingConfig::default();
        let mut rng = SplitMix64::new(1);
        assert_eq!(sample_next(logits.clone(), &[], &greedy, &mut rng), 1);
        let warm = SamplingConfig {
            temperature: 1.0,
            top_k: Some(3),
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..50)
                .map(|_| sample_next(logits.clone(), &[], &warm, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert!(!draw(9).contains(&0), "token 0 is outside the top 3");
        assert!(
            draw(9).iter().any(|&t| t != 1),
            "sampling never left the argmax"
        );
    }

    #[test]
    fn bad_settings_are_rejected() {
        let bad = |c: SamplingConfig| c.validate().is_err();
        assert!(bad(SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        }));
        assert!(bad(SamplingConfig {
            top_k: Some(0),
            ..Default::default()
        }));
        assert!(bad(SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        }));
        assert!(bad(SamplingConfig {
            repetition_penalty: 0.0,
            ..Default::default()
        }));
        assert!(SamplingConfig::default().validate().is_ok());
    }
}
