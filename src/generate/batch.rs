//! Many streams decoded together: each step feeds every live stream's token in one
//! [`Model::step`], so each weight is read once for all of them. When a stream ends, the
//! next input takes its slot (its prompt fed in sequence mode on its own).

use super::{Generation, Step};
use crate::error::Result;
use crate::model::Model;
use crate::state::State;
use std::collections::BTreeMap;

/// What a finished input gives: its answer, or the error that stopped it.
pub type Outcome<'a, E> = std::result::Result<Generation<'a>, E>;

/// What asking for the next input gives.
pub enum Next<T> {
    /// The next input.
    Input(T),
    /// None is ready now (asked without waiting).
    Later,
    /// There are no more.
    End,
}

/// Decode the streams `inputs` gives (each its input index and its stream with the prompt
/// fed, or an error), up to `n` at a time. `inputs(wait)` waits for the next input only
/// when `wait` (nothing is being decoded); otherwise it gives what is ready, so that the
/// live streams go on while input trickles in. `on_step(index, step)` sees every token as it
/// is chosen; `done(index, outcome)` gets each input when it ends, in the order they end.
/// `stop()` is asked between steps: once it says so, the live streams end as interrupted
/// and no more inputs are taken.
pub fn run<'a, E: From<crate::Error>>(
    model: &'a Model,
    n: usize,
    inputs: &mut dyn FnMut(bool) -> Next<(usize, Outcome<'a, E>)>,
    on_step: &mut dyn FnMut(usize, &Step) -> std::result::Result<(), E>,
    done: &mut dyn FnMut(usize, Outcome<'a, E>) -> std::result::Result<(), E>,
    stop: &dyn Fn() -> bool,
) -> std::result::Result<(), E> {
    let n = n.max(1);
    let mut live: Vec<(usize, Generation<'a>)> = Vec::with_capacity(n);
    let mut more = true;
    loop {
        while more && live.len() < n && !stop() {
            match inputs(live.is_empty()) {
                Next::Input((i, Ok(g))) if !g.done() => live.push((i, g)),
                Next::Input((i, other)) => done(i, other)?,
                Next::Later => break,
                Next::End => more = false,
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        if stop() {
            more = false;
            for (_, g) in live.iter_mut() {
                g.interrupt();
            }
        }
        // Each stream chooses its token; the ended ones leave.
        let mut k = 0;
        while k < live.len() {
            let (i, g) = &mut live[k];
            match g.choose() {
                Ok(Some(step)) => on_step(*i, &step)?,
                Ok(None) => {}
                Err(e) => {
                    let (i, _) = live.remove(k);
                    done(i, Err(e.into()))?;
                    continue;
                }
            }
            if g.done() && g.pending().is_none() {
                let (i, g) = live.remove(k);
                done(i, Ok(g))?;
            } else {
                k += 1;
            }
        }
        feed(model, &mut live).map_err(E::from)?;
        // Streams that ended on the token just fed (their state now has it) leave too.
        let mut k = 0;
        while k < live.len() {
            if live[k].1.done() {
                let (i, g) = live.remove(k);
                done(i, Ok(g))?;
            } else {
                k += 1;
            }
        }
    }
}

/// Feed every live stream's pending token in one step.
fn feed(model: &Model, live: &mut [(usize, Generation)]) -> Result<()> {
    let mut tokens = Vec::with_capacity(live.len());
    let mut states: Vec<&mut State> = Vec::with_capacity(live.len());
    let mut who = Vec::with_capacity(live.len());
    for (k, (_, g)) in live.iter_mut().enumerate() {
        if let Some(t) = g.pending() {
            tokens.push(t);
            states.push(&mut g.state);
            who.push(k);
        }
    }
    if tokens.is_empty() {
        return Ok(());
    }
    let logits = model.step(&tokens, &mut states)?;
    drop(states);
    let v = model.cfg.vocab;
    for (row, k) in who.into_iter().enumerate() {
        live[k].1.accept(logits[row * v..(row + 1) * v].to_vec());
    }
    Ok(())
}

/// Results that arrive out of order, handed out in order: each as soon as it and all
/// before it are in.
#[derive(Debug)]
pub struct InOrder<T> {
    next: usize,
    waiting: BTreeMap<usize, T>,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder {
            next: 0,
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> InOrder<T> {
    /// Result `i` is in: those now ready, in order.
    pub fn put(&mut self, i: usize, t: T) -> Vec<T> {
        self.waiting.insert(i, t);
        let mut out = Vec::new();
        while let Some(t) = self.waiting.remove(&self.next) {
            out.push(t);
            self.next += 1;
        }
        out
    }

    /// Results held back (waiting for an earlier one).
    pub fn held(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_out_in_input_order() {
        let mut o = InOrder::default();
        assert!(o.put(2, 'c').is_empty());
        assert!(o.put(1, 'b').is_empty());
        assert_eq!(o.held(), 2);
        assert_eq!(o.put(0, 'a'), vec!['a', 'b', 'c']);
        assert_eq!(o.put(3, 'd'), vec!['d']);
        assert_eq!(o.held(), 0);
    }
}
