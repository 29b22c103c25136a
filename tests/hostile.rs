//! Hostile files and input against the binaries: crafted cases (sizes that wrap, bytes
//! outside their storage, zip records pointing into the comment, nested and looping
//! pickles, huge counts, planted links, non-finite weights) and seeded mutations of every
//! input kind (safetensors, `.pth`, Ai00 `.st`, state files, state-tuning files,
//! `tokenizer.json`, JSON-lines requests). Every run must end with status 0, 1 or 2, one
//! line of error and no signal, within a time and memory bound, and leave no output file
//! clobbered or half-written.
//!
//! `RWKV_HOSTILE_CASES=N` sets the mutations per input kind (default 24); the long run is
//! `RWKV_HOSTILE_CASES=1000 cargo test --release --test hostile -- --nocapture`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Virtual memory a run may take, in KiB (the models here are a few MB).
const MEMORY_KB: u64 = 4 << 20;
/// Wall time a run may take.
const TIMEOUT: Duration = Duration::from_secs(30);

struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// `bin args < stdin` under `ulimit -v` and a timeout (killed past it: a failure).
fn run_bounded(bin: &str, args: &[&str], stdin: &[u8]) -> Outcome {
    run_within(MEMORY_KB, bin, args, stdin)
}

/// [`run_bounded`] under `ulimit -v KB`.
fn run_within(kb: u64, bin: &str, args: &[&str], stdin: &[u8]) -> Outcome {
    let exe = Path::new(env!("CARGO_BIN_EXE_rwkv-gen")).with_file_name(bin);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kb} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args(args)
        .env_remove("RWKV_MODEL")
        // one malloc arena: each further one reserves 64 MB of address space, as many as
        // the threads' timing makes, which would make a tight `ulimit -v` a lottery
        .env("MALLOC_ARENA_MAX", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    // drained as the child writes, so a large output never fills the pipe and stalls it
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = { r }.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("{bin} {args:?}: still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// The rules every run keeps; the exit status.
fn well_behaved(what: &str, o: &Outcome) -> i32 {
    let code = o
        .code
        .unwrap_or_else(|| panic!("{what}: killed by a signal; stderr {:?}", o.stderr));
    assert!(
        matches!(code, 0..=2),
        "{what}: exit {code}; stderr {:?}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
    if code != 0 {
        assert_eq!(
            o.stderr.lines().count(),
            1,
            "{what}: not one line of error: {:?}",
            o.stderr
        );
    }
    code
}

/// Deterministic bytes: xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One seeded mutation of `b`: cut short, bytes flipped (anywhere, or within `hot`), or a
/// number in `hot` grown huge.
fn mutate(b: &[u8], hot: std::ops::Range<usize>, rng: &mut Rng) -> Vec<u8> {
    let mut v = b.to_vec();
    let in_hot = |rng: &mut Rng| hot.start + rng.below(hot.len());
    match rng.below(4) {
        0 => v.truncate(rng.below(b.len())),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
        }
        2 => {
            for _ in 0..1 + rng.below(4) {
                let i = in_hot(rng);
                v[i] = rng.next() as u8;
            }
        }
        _ => {
            // the digits of a number in the hot range (a JSON header) made huge
            let at = in_hot(rng);
            if let Some(d) = v[at..hot.end].iter().position(u8::is_ascii_digit) {
                let i = at + d;
                let big = ["99999999999999999999", "4294967296", "18446744073709551615"];
                let end = i + v[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                v.splice(i..end, big[rng.below(3)].bytes());
            } else {
                let i = in_hot(rng);
                v[i] ^= 0x80;
            }
        }
    }
    v
}

fn cases() -> usize {
    std::env::var("RWKV_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// Run `n` mutations of `file` through `command(path)`; print the exit statuses.
fn mutations(
    kind: &str,
    file: &Path,
    hot: impl Fn(&[u8]) -> std::ops::Range<usize>,
    command: impl Fn(&Path, &Path) -> (String, Vec<String>, Vec<u8>),
) {
    let dir = temp_dir(&format!("hostile-{kind}"));
    let orig = std::fs::read(file).unwrap();
    let hot = hot(&orig);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ kind.len() as u64);
    let mut codes = [0usize; 3];
    for case in 0..cases() {
        let bad = dir.join(format!(
            "{case}.{}",
            file.extension().unwrap().to_string_lossy()
        ));
        std::fs::write(&bad, mutate(&orig, hot.clone(), &mut rng)).unwrap();
        let out = dir.join("out.state");
        std::fs::write(&out, b"PREVIOUS").unwrap();
        let (bin, args, stdin) = command(&bad, &out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_bounded(&bin, &args, &stdin);
        let code = well_behaved(&format!("{kind} case {case}"), &o);
        codes[code as usize] += 1;
        let after = std::fs::read(&out).unwrap_or_default();
        if code != 0 {
            assert_eq!(after, b"PREVIOUS", "{kind} case {case}: output clobbered");
        }
        std::fs::remove_file(&bad).unwrap();
    }
    eprintln!(
        "{kind}: {} mutations, exit 0: {}, 1: {}, 2: {}",
        cases(),
        codes[0],
        codes[1],
        codes[2]
    );
}

fn s(v: &str) -> String {
    v.to_string()
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The safetensors header's byte range.
fn header_range(b: &[u8]) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    8..8 + n
}

const TINY6: &str = "tiny-rwkv6-1m.safetensors";

fn score_cmd(model: &Path) -> (String, Vec<String>, Vec<u8>) {
    let args = vec![
        s("-m"),
        path_str(model),
        s("--tokenizer"),
        s("bytes"),
        s("-q"),
    ];
    (s("rwkv-score"), args, b"in the beginning".to_vec())
}

#[test]
fn mutated_safetensors_models() {
    mutations("safetensors", &model_path(TINY6), header_range, |m, _| {
        score_cmd(m)
    });
}

#[test]
fn mutated_ai00_models() {
    let dir = temp_dir("hostile-ai00-src");
    let st = dir.join("tiny.ai00.st");
    convert_layout(&model_path(TINY6), &st, "ai00");
    mutations("ai00", &st, header_range, |m, _| score_cmd(m));
}

#[test]
fn mutated_pth_models() {
    let pth = model_path("rand-rwkv7-d256-bf16.pth");
    // the pickle and the zip directories: the first and last few KB
    mutations(
        "pth",
        &pth,
        |b| b.len() - 4096..b.len(),
        |m, _| score_cmd(m),
    );
    mutations("pth-pickle", &pth, |_| 0..4096, |m, _| score_cmd(m));
}

#[test]
fn mutated_state_files() {
    let dir = temp_dir("hostile-state-src");
    let st = dir.join("fed.state");
    let m = model_arg(TINY6);
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-p", "abc", "-o", &path_str(&st)],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    mutations("state", &st, header_range, |bad, _| {
        let args = vec![
            s("-m"),
            m.clone(),
            s("--state"),
            path_str(bad),
            s("-p"),
            s("x"),
        ];
        (
            s("rwkv-gen"),
            [args, vec![s("-n"), s("2")]].concat(),
            vec![],
        )
    });
    mutations("state-info", &st, header_range, |bad, _| {
        (s("rwkv-state"), vec![s("info"), path_str(bad)], vec![])
    });
}

#[test]
fn mutated_state_tuning_files() {
    for (kind, file, hot) in [
        ("tuning-pth", "rand-rwkv6-d256-fp16.state.pth", None),
        (
            "tuning-ai00",
            "rand-rwkv6-d256-fp16.state.ai00.st",
            Some(header_range as fn(&[u8]) -> std::ops::Range<usize>),
        ),
    ] {
        let f = model_path(file);
        let hot = move |b: &[u8]| hot.map_or(0..b.len().min(4096), |h| h(b));
        mutations(kind, &f, hot, |bad, out| {
            let args = vec![s("import"), path_str(bad), s("-o"), path_str(out)];
            (s("rwkv-state"), args, vec![])
        });
    }
}

#[test]
fn mutated_tokenizer_json() {
    let dir = temp_dir("hostile-tok-src");
    let tok = dir.join("tokenizer.json");
    let vocab: serde_json::Map<String, serde_json::Value> = (0..200u32)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .chain([("a".to_string(), serde_json::json!(200))])
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"}
    });
    std::fs::write(&tok, json.to_string()).unwrap();
    let m = model_arg(TINY6);
    mutations(
        "tokenizer",
        &tok,
        |b| 0..b.len(),
        |bad, _| {
            let args = vec![s("-m"), m.clone(), s("--tokenizer"), path_str(bad), s("-q")];
            (s("rwkv-score"), args, b"a t1 t2".to_vec())
        },
    );
}

#[test]
fn mutated_jsonl_requests() {
    let dir = temp_dir("hostile-jsonl-src");
    let req = dir.join("requests.jsonl");
    std::fs::write(
        &req,
        concat!(
            r#"{"id": 1, "prompt": "The cat", "max_tokens": 3, "temperature": 0}"#,
            "\n",
            r#"{"id": "two", "ids": [1, 2, 3], "max_tokens": 2, "stop": ["x"], "seed": 4}"#,
            "\n"
        ),
    )
    .unwrap();
    let m = model_arg(TINY6);
    mutations(
        "jsonl",
        &req,
        |b| 0..b.len(),
        |bad, _| {
            let input = std::fs::read(bad).unwrap();
            (s("rwkv-gen"), vec![s("-m"), m.clone(), s("--jsonl")], input)
        },
    );
}

/// A stored zip of `members`, and each member's local header offset.
fn zip(members: &[(&str, Vec<u8>)], comment: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for (name, data) in members {
        offsets.push(out.len());
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
    }
    let cd = out.len();
    for ((name, data), off) in members.iter().zip(&offsets) {
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        out.extend_from_slice(&(*off as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    let cd_len = out.len() - cd;
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(cd_len as u32).to_le_bytes());
    out.extend_from_slice(&(cd as u32).to_le_bytes());
    out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    out.extend_from_slice(comment);
    (out, offsets)
}

/// Pickle ops for a string and for an int.
fn p_str(v: &str) -> Vec<u8> {
    let mut o = vec![b'X'];
    o.extend_from_slice(&(v.len() as u32).to_le_bytes());
    o.extend_from_slice(v.as_bytes());
    o
}

fn p_int(v: u64) -> Vec<u8> {
    let mut o = vec![0x8a, 8];
    o.extend_from_slice(&v.to_le_bytes());
    o
}

fn p_tuple(items: &[u64]) -> Vec<u8> {
    let mut o = vec![b'('];
    for &i in items {
        o.extend(p_int(i));
    }
    o.push(b't');
    o
}

/// A pickled tensor: name, storage key, offset, shape, stride.
type Pickled<'a> = (&'a str, &'a str, u64, &'a [u64], &'a [u64]);

/// A `torch.save` state dict of bf16 tensors.
fn state_dict(tensors: &[Pickled]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (name, key, off, shape, stride) in tensors {
        p.extend(p_str(name));
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        p.extend(p_str("storage"));
        p.extend_from_slice(b"ctorch\nBFloat16Storage\n");
        p.extend(p_str(key));
        p.extend(p_str("cpu"));
        p.extend(p_int(1));
        p.extend_from_slice(b"tQ");
        p.extend(p_int(*off));
        p.extend(p_tuple(shape));
        p.extend(p_tuple(stride));
        p.extend_from_slice(&[0x89, b't', b'R']);
    }
    p.extend_from_slice(b"u.");
    p
}

fn write_pth(dir: &Path, name: &str, pickle: Vec<u8>, storage: usize, comment: &[u8]) -> PathBuf {
    let (bytes, _) = zip(
        &[
            ("archive/data.pkl", pickle),
            ("archive/data/0", vec![0u8; storage]),
        ],
        comment,
    );
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn fails_with(file: &Path, needles: &[&str]) {
    let (bin, args, stdin) = score_cmd(file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_bounded(&bin, &args, &stdin);
    let code = well_behaved(&path_str(file), &o);
    assert_eq!(code, 1, "{}: {}", file.display(), o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "{:?} lacks {n:?}", o.stderr);
    }
    for library in [
        "ValidationOverflow",
        "InvalidOffset",
        "HeaderTooLarge",
        "Error {",
    ] {
        assert!(!o.stderr.contains(library), "library words: {}", o.stderr);
    }
}

/// Sizes that wrap, bytes outside their storage, strides that lie, zip records pointing
/// into the comment: each one line, exit 1.
#[test]
fn crafted_pth_files_are_refused() {
    let dir = temp_dir("hostile-pth");
    // a vocabulary whose byte size wraps 64 bits
    let huge = 1u64 << 62;
    let p = write_pth(
        &dir,
        "wrap.pth",
        state_dict(&[("emb.weight", "0", 0, &[huge, 8], &[8, 1])]),
        64,
        b"",
    );
    fails_with(&p, &["wrap.pth", "emb.weight", "impossible shape"]);
    // an offset whose byte position wraps back into the storage
    let p = write_pth(
        &dir,
        "offset.pth",
        state_dict(&[("emb.weight", "0", (1u64 << 62) + 1, &[2, 2], &[2, 1])]),
        64,
        b"",
    );
    fails_with(&p, &["emb.weight", "outside its storage"]);
    // bytes past the storage's end
    let p = write_pth(
        &dir,
        "past.pth",
        state_dict(&[("emb.weight", "0", 30, &[2, 2], &[2, 1])]),
        64,
        b"",
    );
    fails_with(&p, &["emb.weight", "outside its storage"]);
    // a storage that is not in the zip
    let p = write_pth(
        &dir,
        "nostorage.pth",
        state_dict(&[("emb.weight", "7", 0, &[2, 2], &[2, 1])]),
        64,
        b"",
    );
    fails_with(&p, &["emb.weight", "data/7"]);
    // a central directory entry whose local header lies in the end-of-file comment
    let pickle = state_dict(&[("emb.weight", "0", 0, &[2, 2], &[2, 1])]);
    let (mut bytes, _) = zip(
        &[
            ("archive/data.pkl", pickle),
            ("archive/data/0", vec![0; 64]),
        ],
        b"PK\x03\x04 a comment that looks like a local header",
    );
    let eocd = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let cd = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let comment_at = (eocd + 22) as u32;
    bytes[cd + 42..cd + 46].copy_from_slice(&comment_at.to_le_bytes());
    let p = dir.join("comment.pth");
    std::fs::write(&p, bytes).unwrap();
    fails_with(&p, &["comment.pth", "not a valid .pth zip"]);
}

/// A pickle of tuples nested a million deep, one of 40 million empty tuples (it took
/// about 100 bytes of memory a byte, and aborted), and one whose memo is read and written
/// in a loop (every get copied the value before): bounded time and memory, one line. A
/// pickle runs at most 128 operations per storage in its zip, and 4096 more.
#[test]
fn nested_and_looping_pickles() {
    let dir = temp_dir("hostile-pickle");
    let mut deep = vec![0x80, 2, b'N'];
    deep.extend(std::iter::repeat_n(0x85, 1_000_000)); // TUPLE1, a million times
    deep.push(b'.');
    let p = write_pth(&dir, "deep.pth", deep, 64, b"");
    fails_with(&p, &["deep.pth", "more than 4352 operations"]);

    let mut wide = vec![0x80, 2, b'}'];
    wide.extend(std::iter::repeat_n(b')', 40_000_000)); // EMPTY_TUPLE
    wide.push(b'.');
    let p = write_pth(&dir, "wide.pth", wide, 64, b"");
    let t = Instant::now();
    fails_with(&p, &["wide.pth", "more than 4352 operations"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // memo 0 = (); then 40 times: push memo 0 twice, pair them, store as memo 0
    let mut lp = vec![0x80, 2, b')', b'q', 0];
    for _ in 0..40 {
        lp.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0, b'0']);
    }
    lp.extend_from_slice(b"}.");
    let p = write_pth(&dir, "memo.pth", lp, 64, b"");
    let t = Instant::now();
    fails_with(&p, &["memo.pth"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A layer index of 10^11 in one name, a zero-width model and a tensor of the wrong rank:
/// refused before anything is allocated for them.
#[test]
fn crafted_safetensors_are_refused() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = temp_dir("hostile-st");
    let src = std::fs::read(model_path(TINY6)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    // the fixture with one more tensor, named for layer 10^11
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    owned.push((
        "blocks.100000000000.ln1.weight".into(),
        Dtype::F32,
        vec![4],
        vec![0; 16],
    ));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let p = dir.join("layers.safetensors");
    std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
    fails_with(&p, &["layer 100000000000", "layer 12 has none"]);

    // a whole model of width 0
    let views: Vec<(String, TensorView)> = [
        ("emb.weight", vec![256, 0]),
        ("blocks.0.att.time_maa_x", vec![1, 1, 0]),
        ("blocks.0.att.time_faaaa", vec![0, 8]),
        ("blocks.0.ffn.key.weight", vec![0, 0]),
        ("blocks.0.att.time_decay_w1", vec![0, 64]),
        ("blocks.0.att.time_maa_w2", vec![5, 32, 0]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), TensorView::new(Dtype::F32, s, &[]).unwrap()))
    .collect();
    let p = dir.join("zero.safetensors");
    std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
    fails_with(&p, &["zero.safetensors", "no width"]);
}

#[test]
fn mutated_gguf_models() {
    // the header, metadata and tensor table: everything before the first tensor's data
    let table = |b: &[u8]| {
        let g = rwkv::model::gguf::read(std::path::Path::new("x.gguf"), b).unwrap();
        0..g.tensors.values().map(|t| t.offset).min().unwrap()
    };
    for file in ["tiny-rwkv6-1m.Q8_0.gguf", "rand-rwkv7-d256-bf16.Q6_K.gguf"] {
        mutations("gguf", &model_path(file), table, |m, _| score_cmd(m));
    }
    // the blocks themselves: scales that are NaN or infinite once decoded
    let data = |b: &[u8]| table(b).end..b.len();
    let q6k = model_path("rand-rwkv7-d256-bf16.Q6_K.gguf");
    mutations("gguf-blocks", &q6k, data, |m, _| score_cmd(m));
}

#[test]
fn mutated_adapters() {
    let base = model_path("rand-rwkv7-d256-bf16.pth");
    for (kind, file) in [
        ("adapter", "rand-rwkv7-d256-bf16.lora.pth"),
        ("adapter-disha", "rand-rwkv7-d256-bf16.disha.pth"),
    ] {
        let adapter = model_path(file);
        let len = std::fs::metadata(&adapter).unwrap().len() as usize;
        // the pickle (first KB) and the zip directory (last KB)
        for (name, hot) in [("pickle", 0..1024), ("zip", len - 1024..len)] {
            mutations(
                &format!("{kind}-{name}"),
                &adapter,
                |_| hot.clone(),
                |a, _| {
                    let args = vec![
                        s("-m"),
                        path_str(&base),
                        s("--adapter"),
                        path_str(a),
                        s("--tokenizer"),
                        s("bytes"),
                        s("-q"),
                    ];
                    (s("rwkv-score"), args, b"in the beginning".to_vec())
                },
            );
        }
    }
}

/// Truncation, sizes that wrap, counts past the file, unknown types, misaligned data and
/// metadata that lies: each one line, exit 1.
#[test]
fn crafted_gguf_files_are_refused() {
    let dir = temp_dir("hostile-gguf");
    let real = std::fs::read(model_path("tiny-rwkv6-1m.Q8_0.gguf")).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    fails_with(&cut, &["cut.gguf", "truncated: tensor"]);

    let arch = |a: &str| ("general.architecture", 8, gguf_str(a));
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let f32s = |n: usize| vec![0u8; 4 * n];
    let cases: Vec<(&str, Vec<u8>, &[&str])> =
        vec![
        (
            "huge-string",
            gguf_bytes(&[("general.name", 8, (1u64 << 62).to_le_bytes().to_vec())], &[]),
            &["truncated: the file ends inside general.name"],
        ),
        (
            "huge-array",
            {
                let mut v = 8u32.to_le_bytes().to_vec();
                v.extend((1u64 << 62).to_le_bytes());
                gguf_bytes(&[("tokenizer.ggml.tokens", 9, v)], &[])
            },
            &["tokenizer.ggml.tokens claims 4611686018427387904 elements, past the file"],
        ),
        (
            "wrapping",
            gguf_bytes(&[arch("rwkv6")], &[("w", vec![1 << 33, 1 << 33, 1 << 33], 0, 0, f32s(4))]),
            &["tensor `w` has an impossible shape"],
        ),
        (
            "unknown-type",
            gguf_bytes(&[arch("rwkv6")], &[("w", vec![32], 77, 0, f32s(32))]),
            &["tensor `w` has unknown type 77"],
        ),
        (
            "iq-type",
            gguf_bytes(&[arch("rwkv6")], &[("w", vec![256], 16, 0, f32s(64))]),
            &["tensor `w` is IQ2_XXS, a type these tools do not read"],
        ),
        (
            "misaligned",
            gguf_bytes(&[arch("rwkv6")], &[("w", vec![4], 0, 8, f32s(8))]),
            &["tensor `w` starts at 8, not a multiple of the alignment 32"],
        ),
        (
            "alignment",
            gguf_bytes(&[arch("rwkv6"), ("general.alignment", 4, u32v(24))], &[]),
            &["general.alignment is not a power of two"],
        ),
        (
            "counts",
            {
                let mut b = gguf_bytes(&[], &[]);
                b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            },
            &["impossible counts"],
        ),
        (
            "llama",
            gguf_bytes(&[arch("llama")], &[("w", vec![4], 0, 0, f32s(4))]),
            &["a GGUF model of architecture `llama`: these tools run only `rwkv6` and `rwkv7`"],
        ),
        (
            "head-size",
            gguf_bytes(
                &[arch("rwkv7"), ("rwkv7.wkv.head_size", 4, u32v(7))],
                &[("blk.0.time_mix_r_k.weight", vec![64], 0, 0, f32s(64))],
            ),
            &["blk.0.time_mix_r_k.weight", "rwkv7.wkv.head_size"],
        ),
        (
            "twice",
            gguf_bytes(
                &[arch("rwkv6")],
                &[("w", vec![4], 0, 0, f32s(8)), ("w", vec![4], 0, 0, vec![])],
            ),
            &["tensor `w` is listed twice"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let p = dir.join(format!("{name}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        fails_with(&p, needles);
    }
}

/// A weight that is NaN: scoring says where the logits stopped being numbers, never a
/// silent `null` or an end of text.
#[test]
fn non_finite_weights_are_an_error() {
    let dir = temp_dir("hostile-nan");
    let mut bytes = std::fs::read(model_path(TINY6)).unwrap();
    // the head's first row, NaN
    let head = header_range(&bytes).end + {
        let meta: serde_json::Value = serde_json::from_slice(&bytes[header_range(&bytes)]).unwrap();
        meta["head.weight"]["data_offsets"][0].as_u64().unwrap() as usize
    };
    for b in bytes[head..head + 4 * 64].chunks_mut(4) {
        b.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let p = dir.join("nan.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    fails_with(&p, &["non-finite logit"]);
    let o = run_bounded(
        "rwkv-gen",
        &["-m", &path_str(&p), "-p", "abc", "-n", "3"],
        b"",
    );
    assert_eq!(well_behaved("nan gen", &o), 1);
    assert!(o.stdout.is_empty());
}

/// An output path that is a symbolic link is replaced, not written through.
#[test]
fn outputs_replace_links_instead_of_following_them() {
    let dir = temp_dir("hostile-link");
    let target = dir.join("precious.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let out = dir.join("out.state");
    std::os::unix::fs::symlink(&target, &out).unwrap();
    let m = model_arg(TINY6);
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-p", "abc", "-o", &path_str(&out)],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(!std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// The inputs that once took memory in proportion to their size, each under `ulimit -v`
/// of 1 GB: a 20 MB line to tokenize, per-token records with alternatives for 40,000
/// tokens, a 20 MB pickle of empty tuples (1.7 GB before), a prompt from /dev/zero and a
/// merge of /dev/zero (no bound before). The address space a run needs moves with the
/// machine's thread timing (alone the tools need under 160 MB, yet a loaded CI machine
/// failed 256), so the tight bounds are `tests/memory.rs`'s, on each run's resident peak.
#[test]
fn inputs_that_grew_memory_stay_within_bounds() {
    const KB: u64 = 1 << 20;
    let within = |bin: &str, args: &[&str], stdin: &[u8]| {
        run_within(KB, bin, &[&["--threads", "2"], args].concat(), stdin)
    };
    let dir = temp_dir("hostile-memory");
    let m = path_str(&model_path(TINY6));
    let mut line = b"the quick brown fox ".repeat(1 << 20);
    line.push(b'\n');
    let tokenize = ["--tokenizer", "world", "--tokenize", "--lines"];
    let o = within("rwkv-score", &tokenize, &line);
    assert_eq!(well_behaved("tokenize a 20 MB line", &o), 0, "{}", o.stderr);

    let doc = b"Now is the winter of our discontent. ".repeat(1100);
    let per_token = ["-m", &m, "-q", "--per-token", "--top-logprobs", "5"];
    let o = within("rwkv-score", &per_token, &doc);
    assert_eq!(well_behaved("per-token records", &o), 0, "{}", o.stderr);
    assert!(o.stdout.len() > 10 << 20, "the records were written");

    let mut wide = vec![0x80, 2, b'}'];
    wide.extend(std::iter::repeat_n(b')', 20_000_000));
    wide.push(b'.');
    let p = write_pth(&dir, "wide.pth", wide, 64, b"");
    let o = within("rwkv-score", &["-m", &path_str(&p)], b"x");
    assert_eq!(well_behaved("a 20 MB pickle", &o), 1);

    let o = within("rwkv-gen", &["-m", &m, "-f", "/dev/zero", "-n", "1"], b"");
    assert_eq!(well_behaved("a prompt from /dev/zero", &o), 1);
    let o = within("rwkv-score", &["--merge", "/dev/zero"], b"");
    assert_eq!(well_behaved("--merge /dev/zero", &o), 1);
}

/// `--jsonl` requests naming paths that are no state file to read or write: a FIFO with no
/// writer (it stalled the batch), a character device, a folder, a path another request
/// saves. Each is refused on its own record, the batch goes on, and nothing is created.
#[test]
fn requests_naming_special_paths_are_refused() {
    let dir = temp_dir("hostile-requests");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let saved = dir.join("saved.state");
    let req = |i: usize, field: &str, path: &Path| {
        let p = serde_json::to_string(path.to_str().unwrap()).unwrap();
        format!("{{\"id\": {i}, \"ids\": [1], \"max_tokens\": 1, \"{field}\": {p}}}\n")
    };
    let input = [
        req(1, "state", &fifo),
        req(2, "save_state", &fifo),
        req(3, "state", Path::new("/dev/zero")),
        req(4, "save_state", &dir),
        req(5, "save_state", &saved),
        req(6, "state", &saved),
        req(7, "save_state", &saved),
    ]
    .concat();
    let m = model_arg(TINY6);
    let o = run_bounded("rwkv-gen", &["-m", &m, "--jsonl"], input.as_bytes());
    assert_eq!(well_behaved("special paths", &o), 1);
    let recs: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<bool> = recs.iter().map(|r| r.get("error").is_some()).collect();
    assert_eq!(
        errors,
        [true, true, true, true, false, true, true],
        "{recs:?}"
    );
    assert!(o.stderr.contains("6 of 7 requests failed"), "{}", o.stderr);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "the FIFO and the one state saved: {left:?}");
}
