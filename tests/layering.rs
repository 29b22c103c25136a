//! The layering of `src/` holds: no file imports, through any chain of others, a file that
//! imports it. Read from the source itself: every path a file names (`use` trees, inline
//! `crate::`/`super::`/`self::` paths, its child modules), each resolved to the file that
//! defines the item; test modules and comments are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every `.rs` file under `src/` by module path (`src/model/mod.rs` is `model`).
fn modules(dir: &Path, at: &Module, out: &mut BTreeMap<Module, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut m = at.clone();
            m.push(name);
            modules(&p, &m, out);
        } else if p.extension().is_some_and(|x| x == "rs") && name != "tests" {
            let mut m = at.clone();
            if name != "mod" && name != "lib" {
                m.push(name);
            }
            out.insert(m, std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` module.
fn code(src: &str) -> String {
    let tests = src.match_indices("mod tests {").map(|(i, _)| i);
    let src = match tests.last().and_then(|i| src[..i].rfind("#[cfg(test)]")) {
        Some(i) => &src[..i],
        None => src,
    };
    let (mut out, b) = (String::new(), src.as_bytes());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2 + src[i + 2..].find("*/").map_or(b.len(), |k| k + 2);
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths a `use` tree names: `a::{b, c::{d as e, *}}` is `a::b`, `a::c::d`, `a::c`.
fn use_paths(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let (mut depth, mut start) = (0, 0);
        for (k, c) in inner.char_indices().chain([(inner.len(), ',')]) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    use_paths(&inner[start..k], &base, out);
                    start = k + 1;
                }
                _ => {}
            }
        }
    } else if !tree.is_empty() {
        let mut p = prefix.to_vec();
        p.extend(segments(tree.split(" as ").next().unwrap()));
        out.push(p);
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "*" && *s != "self")
        .map(String::from)
        .collect()
}

/// The file modules module `m` depends on.
fn imports(m: &Module, src: &str, files: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let mut paths = Vec::new();
    let mut rest = String::new();
    // `use` trees, whole; the other statements for inline paths
    for part in code(src).split(';') {
        let at = part
            .match_indices("use ")
            .map(|(i, _)| i)
            .find(|&i| i == 0 || part.as_bytes()[i - 1].is_ascii_whitespace());
        match at {
            Some(i) => {
                use_paths(&part[i + 4..], &[], &mut paths);
                rest.push_str(&part[..i]);
            }
            None => rest.push_str(part),
        }
        rest.push(';');
    }
    for w in rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        let p = segments(w);
        if p.len() >= 2 {
            paths.push(p);
        }
    }
    let mut deps = BTreeSet::new();
    for p in paths {
        let Some(first) = p.first() else { continue };
        let mut abs: Module = match first.as_str() {
            "crate" => vec![],
            "super" => m[..m.len().saturating_sub(1)].to_vec(),
            "self" => m.clone(),
            kid => {
                let mut c = m.clone();
                c.push(kid.to_string());
                if !files.contains_key(&c) {
                    continue;
                }
                m.clone()
            }
        };
        let mut rest = &p[if first == "crate" || first == "super" || first == "self" {
            1
        } else {
            0
        }..];
        while rest.first().is_some_and(|s| s == "super") {
            abs.pop();
            rest = &rest[1..];
        }
        abs.extend(rest.iter().cloned());
        let file = (0..=abs.len())
            .rev()
            .map(|k| abs[..k].to_vec())
            .find(|k| files.contains_key(k))
            .unwrap_or_default();
        if &file != m {
            deps.insert(file);
        }
    }
    deps
}

/// The cycles of the graph: each strongly connected component of more than one file.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for d in graph.get(&n).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&Module, BTreeSet<Module>> = graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (k, r) in &all {
        if done.contains(*k) || !r.contains(*k) {
            continue;
        }
        let scc: Vec<Module> = r
            .iter()
            .filter(|o| all.get(o).is_some_and(|ro| ro.contains(*k)))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &vec![],
        &mut files,
    );
    files
        .iter()
        .map(|(m, src)| (m.clone(), imports(m, src, &files)))
        .collect()
}

#[test]
fn no_file_of_src_imports_itself_through_others() {
    let found: Vec<String> = cycles(&graph())
        .iter()
        .map(|c| {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            names.join(" <-> ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles in src/:\n{}",
        found.join("\n")
    );
}

/// Lines of code in `src`, its `#[cfg(test)] mod tests { .. }` left out.
fn lines_without_tests(src: &str) -> usize {
    let tests = src.match_indices("mod tests {").map(|(i, _)| i);
    let end = match tests.last().and_then(|i| src[..i].rfind("#[cfg(test)]")) {
        Some(i) => i,
        None => src.len(),
    };
    src[..end].lines().count()
}

#[test]
fn files_stay_small_enough_to_hold_in_your_head() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut over = Vec::new();
    for e in std::fs::read_dir(root.join("bin")).unwrap() {
        let p = e.unwrap().path();
        let n = std::fs::read_to_string(&p).unwrap().lines().count();
        if n > 250 {
            over.push(format!(
                "{}: {n} lines (a binary: at most 250)",
                p.display()
            ));
        }
    }
    let mut files = BTreeMap::new();
    modules(&root.join("src"), &vec![], &mut files);
    for (m, src) in &files {
        let n = lines_without_tests(src);
        if n > 900 {
            over.push(format!(
                "src module {}: {n} lines without its tests (at most 900)",
                m.join("::")
            ));
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
    assert_eq!(
        lines_without_tests("a\nb\n#[cfg(test)]\nmod tests {\n}\n"),
        2
    );
}

#[test]
fn the_reader_sees_imports_and_cycles() {
    // the parser on its own: a use tree, and a cycle it must report
    let mut p = Vec::new();
    use_paths("super::{a::B, c::{d as e, *}}", &[], &mut p);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        p,
        vec![
            s(&["super", "a", "B"]),
            s(&["super", "c", "d"]),
            s(&["super", "c"])
        ]
    );
    let g: BTreeMap<Module, BTreeSet<Module>> = [
        (s(&["a"]), [s(&["b"])].into()),
        (s(&["b"]), [s(&["a"])].into()),
        (s(&["c"]), [s(&["a"])].into()),
    ]
    .into();
    assert_eq!(cycles(&g), vec![vec![s(&["a"]), s(&["b"])]]);
    // and the real graph knows the edges it should
    let g = graph();
    let m = |p: &str| p.split("::").map(String::from).collect::<Module>();
    assert!(g[&m("model::v7")].contains(&m("model::engine")));
    assert!(g[&m("backend::cpu::schedule")].contains(&m("backend::cpu::shared")));
    assert!(g[&m("model")].contains(&m("model::registry")));
}
