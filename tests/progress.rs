//! The numbers `rwkv-score`'s progress bar is given: each update the bytes and tokens since
//! the last, so that they add up to the document (files) or the lines read (`--lines`).

mod common;

use rwkv::model::Model;
use rwkv::score::docs::{Doc, Scorer};
use rwkv::score::input::{self, Source};
use rwkv::state_file;
use rwkv::tokenizer::Tokenizer;
use serde_json::json;
use std::sync::Mutex;

fn scorer<'m>(model: &'m Model, tok: &'m Tokenizer, chunk: usize) -> Scorer<'m> {
    Scorer {
        model,
        tok,
        start: state_file::start_for(None, model, false).unwrap(),
        chunk,
        bos: true,
        per_token: false,
        top_logprobs: 0,
    }
}

#[test]
fn a_documents_updates_add_up_to_its_bytes_and_tokens() {
    let model = Model::load(&common::model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    let tok = Tokenizer::choose(None, model.cfg.vocab, None).unwrap();
    let text = "To be, or not to be, that is the question. ".repeat(40);
    let updates = Mutex::new(Vec::new());
    let progress = |b, t| updates.lock().unwrap().push((b, t));
    let s = scorer(&model, &tok, 16);
    let rec = s
        .score_reader("doc", &mut text.as_bytes(), &progress, &mut |_| {})
        .unwrap();
    let u = updates.into_inner().unwrap();
    assert!(u.len() > 10, "an update a chunk: {}", u.len());
    let bytes: u64 = u.iter().map(|x| x.0).sum();
    let tokens: u64 = u.iter().map(|x| x.1).sum();
    assert_eq!(
        bytes,
        text.len() as u64,
        "the bar ends at the document's size"
    );
    assert_eq!(tokens, rec["tokens"].as_u64().unwrap());
    assert!(
        u.iter().all(|x| x.0 <= 16 * 4),
        "each update a chunk's bytes: {u:?}"
    );
}

/// With per-token records, a document's scores leave a chunk at a time (memory does not
/// grow with the document) and are the scores the same text gets as one line.
#[test]
fn per_token_scores_leave_a_chunk_at_a_time() {
    let model = Model::load(&common::model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    let tok = Tokenizer::choose(None, model.cfg.vocab, None).unwrap();
    let text = "To be, or not to be, that is the question. ".repeat(40);
    let mut s = scorer(&model, &tok, 16);
    s.per_token = true;
    let mut parts = Vec::new();
    let rec = s
        .score_reader("doc", &mut text.as_bytes(), &|_, _| {}, &mut |ts| {
            parts.push(ts.to_vec())
        })
        .unwrap();
    assert!(parts.len() > 10, "a part a chunk: {}", parts.len());
    assert!(parts.iter().all(|p| p.len() <= 16), "no part over a chunk");
    let all = parts.concat();
    assert_eq!(all.len() as u64, rec["tokens"].as_u64().unwrap());
    let line = s
        .score_doc(json!(1), &Doc::Text(text.into_bytes()))
        .unwrap();
    assert_eq!(line.tokens, Some(all));
    assert_eq!(line.record["nll"], rec["nll"]);
}

#[test]
fn lines_report_their_bytes() {
    let model = Model::load(&common::model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    let tok = Tokenizer::choose(None, model.cfg.vocab, None).unwrap();
    let text = b"first line\nthe second\n\nlast";
    let mut line = 0;
    let how = (1 << 20, false, model.cfg.vocab);
    let batch = input::next_docs(&mut &text[..], "-", how, 8, &mut line).unwrap();
    let updates = Mutex::new(Vec::new());
    let progress = |b, t| updates.lock().unwrap().push((b, t));
    let s = scorer(&model, &tok, 512);
    let recs = input::score_batch(&s, "-", false, &batch, &progress);
    assert_eq!(recs.len(), 4);
    let mut u = updates.into_inner().unwrap();
    u.sort();
    let bytes: Vec<u64> = u.iter().map(|x| x.0).collect();
    assert_eq!(
        bytes,
        vec![1, 5, 11, 11],
        "each line's bytes, its newline too"
    );
    assert_eq!(Source::Stdin.known_size(), 0);
}

/// `rwkv-state feed`'s bar hears each chunk's tokens as it is fed, adding up to the text's.
#[test]
fn feeding_tells_each_chunks_tokens() {
    let model = Model::load(&common::model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    let mut state = model.new_state();
    let ids: Vec<u32> = (0..300).map(|i| (i * 7 % 256) as u32).collect();
    let mut told = Vec::new();
    let logits = model
        .feed_telling(&ids, &mut state, 64, &mut |n| told.push(n))
        .unwrap();
    assert_eq!(told, vec![64, 64, 64, 64, 44]);
    let mut again = model.new_state();
    assert_eq!(logits, model.feed(&ids, &mut again, 64).unwrap());
}
