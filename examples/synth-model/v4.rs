//! RWKV-4 tensors at the official initialisation's value ranges (`docs/RWKV4.md`).

use super::{Args, Init, Tensor};

pub fn tensors(a: &Args) -> Vec<Tensor> {
    let (d, l, v) = (a.embd, a.layers, a.vocab);
    let ffn = a.ffn.unwrap_or(4 * d);
    let mut out = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: Init| out.push(Tensor { name, shape, init });
    push("emb.weight".into(), vec![v, d], Init::Uniform(0.5));
    let df = d as f32;
    for i in 0..l {
        let p = |s: &str| format!("blocks.{i}.{s}");
        // layer ratios r01 = i/(L-1), r10 = 1 - i/L
        let r01 = if l > 1 {
            i as f32 / (l - 1) as f32
        } else {
            0.0
        };
        let r10 = 1.0 - i as f32 / l as f32;
        if i == 0 {
            push(p("ln0.weight"), vec![d], Init::Near(1.0));
            push(p("ln0.bias"), vec![d], Init::Near(0.0));
        }
        for n in ["ln1", "ln2"] {
            push(p(&format!("{n}.weight")), vec![d], Init::Near(1.0));
            push(p(&format!("{n}.bias")), vec![d], Init::Near(0.0));
        }
        let decay = move |c: usize| -5.0 + 8.0 * (c as f32 / (df - 1.0)).powf(0.7 + 1.3 * r01);
        push(p("att.time_decay"), vec![d], Init::noisy(decay));
        let first = |c: usize| (((c + 1) % 3) as f32 - 1.0) * 0.5 + 0.3f32.ln();
        push(p("att.time_first"), vec![d], Init::noisy(first));
        // time_mix_* weigh the current token: x * mix + prev * (1 - mix)
        let mix = Init::noisy(move |c| (c as f32 / df).powf(r10));
        let mix_v = Init::noisy(move |c| (c as f32 / df).powf(r10) + 0.3 * r01);
        let mix_r = Init::noisy(move |c| (c as f32 / df).powf(0.5 * r10));
        for (n, init) in [("k", &mix), ("v", &mix_v), ("r", &mix_r)] {
            push(p(&format!("att.time_mix_{n}")), vec![1, 1, d], init.clone());
        }
        for n in ["key", "value", "receptance", "output"] {
            push(
                p(&format!("att.{n}.weight")),
                vec![d, d],
                Init::Linear { fan_in: d },
            );
        }
        push(p("ffn.time_mix_k"), vec![1, 1, d], mix.clone());
        push(p("ffn.time_mix_r"), vec![1, 1, d], mix);
        push(
            p("ffn.key.weight"),
            vec![ffn, d],
            Init::Linear { fan_in: d },
        );
        push(
            p("ffn.receptance.weight"),
            vec![d, d],
            Init::Linear { fan_in: d },
        );
        push(
            p("ffn.value.weight"),
            vec![d, ffn],
            Init::Linear { fan_in: ffn },
        );
    }
    push("ln_out.weight".into(), vec![d], Init::Near(1.0));
    push("ln_out.bias".into(), vec![d], Init::Near(0.0));
    push("head.weight".into(), vec![v, d], Init::Linear { fan_in: d });
    out
}
