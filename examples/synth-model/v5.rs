//! RWKV-5.2 tensors at the official initialisation's value ranges (`docs/RWKV5.md`).

use super::{Args, Init, Tensor};

pub fn tensors(a: &Args) -> Vec<Tensor> {
    let (d, l, v) = (a.embd, a.layers, a.vocab);
    let ffn = a.ffn.unwrap_or(d * 7 / 2 / 32 * 32);
    let h = d / a.head_size;
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
        // time_mix_* weigh the current token: x * mix + prev * (1 - mix)
        let mix = Init::noisy(move |c| (c as f32 / df).powf(r10));
        let mix_v = Init::noisy(move |c| (c as f32 / df).powf(r10) + 0.3 * r01);
        let mix_rg = Init::noisy(move |c| (c as f32 / df).powf(0.5 * r10));
        for (n, init) in [("k", &mix), ("v", &mix_v), ("r", &mix_rg), ("g", &mix_rg)] {
            push(p(&format!("att.time_mix_{n}")), vec![1, 1, d], init.clone());
        }
        let decay = move |c: usize| -6.0 + 5.0 * (c as f32 / (df - 1.0)).powf(0.7 + 1.3 * r01);
        push(
            p("att.time_decay"),
            vec![h, a.head_size],
            Init::noisy(decay),
        );
        let faaaa = move |c: usize| {
            r01 * (1.0 - c as f32 / (df - 1.0)) + (((c + 1) % 3) as f32 - 1.0) * 0.1
        };
        push(
            p("att.time_faaaa"),
            vec![h, a.head_size],
            Init::noisy(faaaa),
        );
        for n in ["receptance", "key", "value", "gate", "output"] {
            push(
                p(&format!("att.{n}.weight")),
                vec![d, d],
                Init::Linear { fan_in: d },
            );
        }
        push(p("att.ln_x.weight"), vec![d], Init::Near(1.0));
        push(p("att.ln_x.bias"), vec![d], Init::Near(0.0));
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
