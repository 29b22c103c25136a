//! RWKV-7 tensors at the official initialisation's value ranges (`shared/docs/RWKV7.md`,
//! "Value ranges"), with every matrix random (the official init leaves some at zero, which
//! would make the model degenerate) and small per-channel noise on the vectors.

use super::{Args, Init, Tensor};

/// A LoRA's width by the training code's rule: `max(32, round(f sqrt(D) / 32) * 32)`.
fn lora_width(f: f32, d: usize) -> usize {
    (((f * (d as f32).sqrt()) / 32.0).round() as usize * 32).max(32)
}

pub fn tensors(a: &Args) -> Vec<Tensor> {
    let (d, l, v, n) = (a.embd, a.layers, a.vocab, a.head_size);
    let ffn = a.ffn.unwrap_or(4 * d);
    let h = d / n;
    let widths =
        [("w", 2.5), ("a", 2.5), ("v", 1.7), ("g", 5.0)].map(|(x, f)| (x, lora_width(f, d)));
    let mut out = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: Init| out.push(Tensor { name, shape, init });
    push("emb.weight".into(), vec![v, d], Init::Uniform(0.5));
    let df = d as f32;
    // ddd[c] = c/D, lin[c] = c/(D-1) - 0.5, zz[c] = z|z| with z the channel's place in its head
    let ddd = move |c: usize| c as f32 / df;
    let lin = move |c: usize| c as f32 / (df - 1.0) - 0.5;
    let half = (n as f32 - 1.0) / 2.0;
    let zz = move |c: usize| {
        let z = ((c % n) as f32 - half) / half;
        z * z.abs()
    };
    for i in 0..l {
        let p = |s: &str| format!("blocks.{i}.{s}");
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
        for x in ["ln1", "ln2"] {
            push(p(&format!("{x}.weight")), vec![d], Init::Near(1.0));
            push(p(&format!("{x}.bias")), vec![d], Init::Near(0.0));
        }
        for (x, e) in [
            ("r", 0.2),
            ("w", 0.9),
            ("k", 0.7),
            ("v", 0.7),
            ("a", 0.9),
            ("g", 0.2),
        ] {
            let mix = move |c: usize| 1.0 - ddd(c).powf(e * r10);
            push(p(&format!("att.x_{x}")), vec![1, 1, d], Init::noisy(mix));
        }
        let w0 = move |c: usize| {
            -6.0 + 6.0 * (c as f32 / (df - 1.0)).powf(1.0 + r01.powf(0.3)) + 0.5 + 2.5 * zz(c)
        };
        let a0 = move |c: usize| -0.19 + 0.3 * zz(c) + 0.4 * lin(c);
        let v0 = move |c: usize| 0.73 - 0.4 * lin(c);
        for (x, w) in widths {
            if x == "v" && i == 0 {
                continue; // layer 0 has no value residual
            }
            let bias = match x {
                "w" => Some(Init::noisy(w0)),
                "a" => Some(Init::noisy(a0)),
                "v" => Some(Init::noisy(v0)),
                _ => None,
            };
            if let Some(b) = bias {
                push(p(&format!("att.{x}0")), vec![1, 1, d], b);
            }
            push(
                p(&format!("att.{x}1")),
                vec![d, w],
                Init::Linear { fan_in: d },
            );
            push(
                p(&format!("att.{x}2")),
                vec![w, d],
                Init::Linear { fan_in: w },
            );
        }
        push(
            p("att.k_k"),
            vec![1, 1, d],
            Init::noisy(move |c| 0.71 - 0.1 * lin(c)),
        );
        push(p("att.k_a"), vec![1, 1, d], Init::Near(1.02));
        push(p("att.r_k"), vec![h, n], Init::Near(-0.04));
        for x in ["receptance", "key", "value", "output"] {
            push(
                p(&format!("att.{x}.weight")),
                vec![d, d],
                Init::Linear { fan_in: d },
            );
        }
        let ln_x = ((i + 1) as f32 / l as f32).powf(0.7);
        push(p("att.ln_x.weight"), vec![d], Init::Near(ln_x));
        push(p("att.ln_x.bias"), vec![d], Init::Near(0.0));
        let x_k = move |c: usize| 1.0 - ddd(c).powf(r10.powi(4));
        push(p("ffn.x_k"), vec![1, 1, d], Init::noisy(x_k));
        push(
            p("ffn.key.weight"),
            vec![ffn, d],
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

/// RWKV-7 plus each layer's DeepEmbed tensors (`docs/RWKV7.md`, "DeepEmbed"): a per-token
/// 32 x 32 matrix near zero, so that the FFN key's scale stays near `s0 = 1`.
pub fn with_deep_embed(a: &Args) -> Vec<Tensor> {
    let mut out = tensors(a);
    let (d, v) = (a.embd, a.vocab);
    let f = a.ffn.unwrap_or(4 * d);
    for i in 0..a.layers {
        let p = |s: &str| format!("blocks.{i}.ffn.{s}");
        for (name, shape, init) in [
            (p("s_emb.weight"), vec![v, 1024], Init::Uniform(0.1)),
            (p("s_emb_x.weight"), vec![1024, d], Init::Uniform(0.01)),
            (p("s1"), vec![d, 32], Init::Uniform(0.05)),
            (p("s2"), vec![32, f], Init::Uniform(0.05)),
            (p("s0"), vec![1, 1, f], Init::Near(1.0)),
        ] {
            out.push(Tensor { name, shape, init });
        }
    }
    out
}
