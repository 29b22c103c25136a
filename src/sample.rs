//! Sampling with the official RWKV pipeline's semantics, a seeded generator, and the
//! stop-string matcher.
//!
//! Per step (as `rwkv.utils.PIPELINE.generate`): banned tokens get `-inf`; every token seen
//! before loses `presence + count * frequency`; then softmax, top-p cut (keep tokens whose
//! probability is at least that of the token where the cumulative probability reaches
//! `top_p`), top-k cut, `p^(1/temperature)`, renormalise, draw. After a token is drawn all
//! counts decay by `penalty_decay` and the token's count grows by 1 (by 0 for a token whose
//! text is a single space, tab or digit, as the pipeline does). Temperature 0 is argmax.

/// xoshiro256** seeded through splitmix64: small, fast, the same stream on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy argmax.
    pub temperature: f32,
    /// In (0, 1]; 1 disables the cut.
    pub top_p: f32,
    /// 0 disables the cut.
    pub top_k: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Counts are multiplied by this after every token.
    pub penalty_decay: f32,
    pub ban: Vec<u32>,
}

impl Default for SamplerConfig {
    /// The World models' usual settings (ChatRWKV's API demo).
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_p: 0.7,
            top_k: 100,
            presence_penalty: 0.25,
            frequency_penalty: 0.25,
            penalty_decay: 0.996,
            ban: Vec::new(),
        }
    }
}

/// Sampling settings as given: the penalties may be left unset, and then follow the
/// temperature ([`SamplerArgs::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerArgs {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub penalty_decay: f32,
    pub ban: Vec<u32>,
}

impl SamplerArgs {
    /// The settings: a penalty left unset is the World models' usual one (0.25) when
    /// sampling (temperature > 0) or chatting, and 0 at temperature 0, where the next token
    /// is then the model's own argmax.
    pub fn config(&self, chat: bool) -> SamplerConfig {
        let usual = SamplerConfig::default();
        let default = |given: Option<f32>, usual: f32| {
            given.unwrap_or(if chat || self.temperature > 0.0 {
                usual
            } else {
                0.0
            })
        };
        SamplerConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            presence_penalty: default(self.presence_penalty, usual.presence_penalty),
            frequency_penalty: default(self.frequency_penalty, usual.frequency_penalty),
            penalty_decay: self.penalty_decay,
            ban: self.ban.clone(),
        }
    }
}

impl Default for SamplerArgs {
    fn default() -> Self {
        let c = SamplerConfig::default();
        SamplerArgs {
            temperature: c.temperature,
            top_p: c.top_p,
            top_k: c.top_k,
            presence_penalty: None,
            frequency_penalty: None,
            penalty_decay: c.penalty_decay,
            ban: Vec::new(),
        }
    }
}

/// A sampler with its occurrence counts and random stream.
pub struct Sampler {
    pub cfg: SamplerConfig,
    /// `[V]`: decayed occurrence counts.
    counts: Vec<f32>,
    /// Ids with a non-zero count, so that a step touches only those.
    seen: Vec<u32>,
    rng: Rng,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, vocab: usize, seed: u64) -> Sampler {
        Sampler {
            cfg,
            counts: vec![0.0; vocab],
            seen: Vec::new(),
            rng: Rng::new(seed),
            probs: vec![0.0; vocab],
            order: Vec::with_capacity(vocab),
        }
    }

    /// Forget the occurrence counts (a new prompt).
    pub fn reset_counts(&mut self) {
        for &t in &self.seen {
            self.counts[t as usize] = 0.0;
        }
        self.seen.clear();
    }

    /// Apply bans and penalties to `logits` in place.
    pub fn penalize(&self, logits: &mut [f32]) {
        for &b in &self.cfg.ban {
            if let Some(l) = logits.get_mut(b as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        for &t in &self.seen {
            let c = self.counts[t as usize];
            logits[t as usize] -= self.cfg.presence_penalty + c * self.cfg.frequency_penalty;
        }
    }

    /// Record that `token` (whose text is `text`) was emitted.
    pub fn observe(&mut self, token: u32, text: &[u8]) {
        let decay = self.cfg.penalty_decay;
        for &t in &self.seen {
            self.counts[t as usize] *= decay;
        }
        let weight = match text {
            [b' ' | b'\t' | b'0'..=b'9'] => 0.0,
            _ => 1.0,
        };
        let i = token as usize;
        if i < self.counts.len() {
            if !self.seen.contains(&token) {
                self.seen.push(token);
            }
            self.counts[i] += weight;
        }
    }

    /// Penalise `logits` (in place) and draw a token.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.penalize(logits);
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        softmax_into(logits, &mut self.probs);
        let probs = &mut self.probs;
        // Sort ids by probability, descending (ties by id, so the order is total).
        self.order.clear();
        self.order.extend(0..probs.len() as u32);
        let k = self.cfg.top_k;
        let keep = if k > 0 && k < probs.len() {
            k
        } else {
            probs.len()
        };
        let by_prob = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        // Only the top-k matter; partial selection keeps this cheap at V = 65536.
        let top_p = self.cfg.top_p;
        if keep < self.order.len() {
            self.order.select_nth_unstable_by(keep - 1, by_prob);
            self.order.truncate(keep);
        }
        self.order.sort_unstable_by(by_prob);
        // top-p: the probability where the cumulative sum first reaches top_p is the cutoff.
        // (Computed over the top-k window; tokens past it are cut by top-k anyway.)
        let mut cutoff = 0.0;
        if top_p < 1.0 {
            let mut cum = 0.0;
            cutoff = probs[self.order[self.order.len() - 1] as usize];
            for &t in &self.order {
                cum += probs[t as usize];
                if cum >= top_p {
                    cutoff = probs[t as usize];
                    break;
                }
            }
        }
        let inv_t = 1.0 / self.cfg.temperature as f64;
        let mut total = 0.0f64;
        let mut weights: Vec<(u32, f64)> = Vec::with_capacity(self.order.len());
        for &t in &self.order {
            let p = probs[t as usize];
            if p < cutoff || p <= 0.0 {
                continue;
            }
            let w = if inv_t == 1.0 {
                p as f64
            } else {
                (p as f64).powf(inv_t)
            };
            total += w;
            weights.push((t, w));
        }
        if weights.is_empty() || !total.is_finite() || total <= 0.0 {
            return self.order.first().copied().unwrap_or(0);
        }
        let mut x = self.rng.next_f64() * total;
        for &(t, w) in &weights {
            if x < w {
                return t;
            }
            x -= w;
        }
        weights[weights.len() - 1].0
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `out = softmax(logits)`, computed in f64 for the sum.
pub fn softmax_into(logits: &[f32], out: &mut [f32]) {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0f64;
    for (o, &l) in out.iter_mut().zip(logits) {
        let e = (l - m).exp();
        *o = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// `log(sum(exp(logits)))`, stable, in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    m + s.ln()
}

/// The `k` most likely ids with their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let lse = log_sum_exp(logits);
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    ids.select_nth_unstable_by(k - 1, cmp);
    ids.truncate(k);
    ids.sort_unstable_by(cmp);
    ids.into_iter()
        .map(|i| (i, logits[i as usize] as f64 - lse))
        .collect()
}

/// Finds stop strings in a byte stream that arrives in pieces. Bytes that may begin a stop
/// string are held back until it is decided; a matched stop string is never emitted.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Bytes safe to emit now.
    pub emit: Vec<u8>,
    /// A stop string was found; nothing after `emit` is to be written.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<Vec<u8>>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: Vec::new(),
        }
    }

    /// Whether bytes are held back (the start of a stop string, perhaps).
    pub fn holds(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn push(&mut self, bytes: &[u8]) -> StopStep {
        self.pending.extend_from_slice(bytes);
        // The earliest complete match wins.
        let found = self
            .stops
            .iter()
            .filter_map(|s| find(&self.pending, s))
            .min();
        if let Some(at) = found {
            let emit = self.pending[..at].to_vec();
            self.pending.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| self.pending.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let rest = self.pending.split_off(cut);
        StopStep {
            emit: std::mem::replace(&mut self.pending, rest),
            stopped: false,
        }
    }

    /// Held-back bytes, at the end of generation (no stop string followed).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_pieces_is_cut_and_held_back() {
        let mut m = StopMatcher::new(vec![b"\n\nUser".to_vec()]);
        assert_eq!(
            m.push(b"Hello"),
            StopStep {
                emit: b"Hello".to_vec(),
                stopped: false
            }
        );
        assert_eq!(
            m.push(b" world\n"),
            StopStep {
                emit: b" world".to_vec(),
                stopped: false
            }
        );
        assert_eq!(
            m.push(b"\nUs"),
            StopStep {
                emit: vec![],
                stopped: false
            }
        );
        assert_eq!(
            m.push(b"er: hi"),
            StopStep {
                emit: vec![],
                stopped: true
            }
        );
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let mut m = StopMatcher::new(vec![b"abc".to_vec()]);
        assert_eq!(m.push(b"xab").emit, b"x");
        assert_eq!(m.push(b"d").emit, b"abd");
        assert_eq!(m.push(b"a").emit, b"");
        assert_eq!(m.finish(), b"a");
    }

    #[test]
    fn greedy_is_argmax_and_penalties_follow_the_pipeline() {
        let cfg = SamplerConfig {
            temperature: 0.0,
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            penalty_decay: 0.5,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg, 4, 0);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, 1.0]), 1);
        s.observe(1, b"x");
        // token 1 now has count 1: 3.0 - (1.0 + 1 * 0.5) = 1.5 < 2.9
        let mut l = [0.0, 3.0, 2.9, 1.0];
        assert_eq!(s.sample(&mut l), 2);
        assert_eq!(l[1], 1.5);
        s.observe(2, b"y");
        // counts decay: token 1 has 0.5, token 2 has 1
        let mut l = [0.0, 3.0, 2.9, 1.0];
        s.penalize(&mut l);
        assert_eq!(l[1], 3.0 - (1.0 + 0.25));
        assert_eq!(l[2], 2.9 - (1.0 + 0.5));
        // digits and single spaces add no count, but still count as seen (presence)
        s.observe(3, b"7");
        let mut l = [0.0, 0.0, 0.0, 1.0];
        s.penalize(&mut l);
        assert_eq!(l[3], 0.0);
    }

    #[test]
    fn penalties_follow_the_temperature_unless_given() {
        let greedy = SamplerArgs {
            temperature: 0.0,
            ..SamplerArgs::default()
        };
        let c = greedy.config(false);
        assert_eq!((c.presence_penalty, c.frequency_penalty), (0.0, 0.0));
        let c = greedy.config(true);
        assert_eq!((c.presence_penalty, c.frequency_penalty), (0.25, 0.25));
        let c = SamplerArgs::default().config(false);
        assert_eq!((c.presence_penalty, c.frequency_penalty), (0.25, 0.25));
        let given = SamplerArgs {
            temperature: 0.0,
            presence_penalty: Some(0.5),
            ..SamplerArgs::default()
        };
        let c = given.config(false);
        assert_eq!((c.presence_penalty, c.frequency_penalty), (0.5, 0.0));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1f32, 2.0, 1.9, -1.0, 0.5];
        for cfg in [
            SamplerConfig {
                top_k: 1,
                top_p: 1.0,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                top_k: 0,
                top_p: 0.01,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg, 5, 42);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits.clone()), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let cfg = SamplerConfig {
            top_k: 0,
            top_p: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ..Default::default()
        };
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut s = Sampler::new(cfg.clone(), 2, 7);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut logits.clone()) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
        let draw = |seed| {
            let mut s = Sampler::new(cfg.clone(), 2, seed);
            (0..64)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_logprobs_are_sorted_log_softmax() {
        let l = [1.0f32, 3.0, 2.0];
        let t = top_logprobs(&l, 2);
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert_eq!(t[0].0, 1);
        assert!((t[0].1 - (3.0 - lse)).abs() < 1e-9);
        assert_eq!(t[1].0, 2);
    }
}
