//! The World tokenizer against `world-tokenizer.jsonl` (the official tokenizer's ids):
//! exactly those ids for every case, and decoding gives the bytes back.

mod common;
use rwkv::tokenizer::Tokenizer;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn world_matches_every_golden_case() {
    let t = Tokenizer::from_spec("world").unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden/world-tokenizer.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut cases = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let bytes = unhex(case["hex"].as_str().unwrap());
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(t.encode(&bytes).unwrap(), want, "case {line}");
        assert_eq!(t.decode(&want).unwrap(), bytes, "decode of {line}");
        cases += 1;
    }
    assert!(cases >= 10, "only {cases} cases read");
}

#[test]
fn invalid_utf8_is_tokenized_as_bytes() {
    let t = Tokenizer::from_spec("world").unwrap();
    let input = [b'a', 0xFF, 0xFE, b'b', 0xE6];
    let ids = t.encode(&input).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), input);
}

#[test]
fn default_tokenizer_follows_the_vocab() {
    assert_eq!(Tokenizer::for_vocab(65536).unwrap().name(), "world");
    assert_eq!(Tokenizer::for_vocab(256).unwrap().name(), "bytes");
    let e = Tokenizer::for_vocab(1024).err().unwrap().to_string();
    assert!(e.contains("--tokenizer"), "{e}");
}

/// The World models' golden prompt encodes to the tokens their goldens feed (copied from
/// `rand-rwkv6-world-d64-bf16.golden.safetensors`, which checks them when present).
#[test]
fn world_model_golden_prompt_encodes_to_its_tokens() {
    let t = Tokenizer::from_spec("world").unwrap();
    let prompt = "User: RWKV-6 是一种 RNN 语言模型。Tell me more!\n\nAssistant:";
    let want = [
        24281, 59, 4171, 1184, 46, 55, 33, 13091, 10250, 15033, 4163, 79, 33, 16728, 16537, 13499,
        11496, 10080, 24232, 4660, 31458, 34, 261, 5585, 41693, 59,
    ];
    assert_eq!(t.encode(prompt.as_bytes()).unwrap(), want);
    if let Some(g) = common::try_golden("rand-rwkv6-world-d64-bf16") {
        assert_eq!(g.tokens, want);
    }
}

/// Encoding a text in blocks through `encode_prefix` gives the ids of one call.
#[test]
fn prefix_encoding_in_blocks_equals_one_call() {
    let t = Tokenizer::from_spec("world").unwrap();
    let text = "User: RWKV-6 是一种 RNN 语言模型。Tell me more!\n\nAssistant: ".repeat(50);
    let want = t.encode(text.as_bytes()).unwrap();
    for block in [1usize, 7, 100, 1000] {
        let (mut ids, mut buf) = (Vec::new(), Vec::new());
        for piece in text.as_bytes().chunks(block) {
            buf.extend_from_slice(piece);
            let (got, used) = t.encode_prefix(&buf, false).unwrap();
            ids.extend(got);
            buf.drain(..used);
        }
        ids.extend(t.encode_prefix(&buf, true).unwrap().0);
        assert_eq!(ids, want, "block {block}");
    }
}
