//! Man pages and shell completions are generated from the clap definitions and committed.
//! This test fails when they are out of date; `RWKV_REGENERATE=1 cargo test --test
//! generated` rewrites them.

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn commands() -> Vec<clap::Command> {
    vec![
        rwkv::cli::gen::Args::command(),
        rwkv::cli::score::Args::command(),
        rwkv::cli::state::Args::command(),
    ]
}

/// Text for a roff page: backslashes escaped, no line starting with a control character.
fn roff_text(s: &str) -> String {
    s.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The SYNOPSIS section, each option with its value's name (`[-p|--prompt TEXT]`; clap's
/// own leaves the names out), positional arguments and the subcommand last.
fn synopsis(cmd: &clap::Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build(); // each argument's number of values set
    let esc = |s: &str| s.replace('-', "\\-");
    let mut parts = vec![format!("\\fB{}\\fR", esc(cmd.get_name()))];
    let mut positionals = Vec::new();
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let names: Vec<String> = a
            .get_value_names()
            .map(|v| v.iter().map(|n| format!("\\fI{}\\fR", esc(n))).collect())
            .unwrap_or_default();
        let takes = a.get_num_args().is_some_and(|n| n.takes_values());
        let value = match (takes, a.get_num_args().map(|n| n.min_values())) {
            (false, _) => String::new(),
            (true, Some(0)) => format!("[={}]", names.join(" ")),
            (true, _) => format!(" {}", names.join(" ")),
        };
        if a.is_positional() {
            let dots = if a.get_num_args().is_some_and(|n| n.max_values() > 1) {
                "..."
            } else {
                ""
            };
            positionals.push(format!("[{}]{dots}", names.join(" ")));
            continue;
        }
        let mut flags = Vec::new();
        if let Some(c) = a.get_short() {
            flags.push(format!("\\fB\\-{}\\fR", c));
        }
        if let Some(l) = a.get_long() {
            flags.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
        }
        parts.push(format!("[{}{value}]", flags.join("|")));
    }
    parts.extend(positionals);
    if cmd.get_subcommands().next().is_some() {
        parts.push("<\\fISUBCOMMAND\\fR>".into());
    }
    format!(".SH SYNOPSIS\n{}\n", parts.join(" "))
}

/// A man page: clap's title, name, synopsis, description, options and subcommands, then
/// the after-help text as EXAMPLES, EXIT STATUS and NOTES, and SEE ALSO.
fn man_page(cmd: &clap::Command, see_also: &[String]) -> Vec<u8> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page).unwrap();
    man.render_name_section(&mut page).unwrap();
    page.extend_from_slice(synopsis(cmd).as_bytes());
    man.render_description_section(&mut page).unwrap();
    man.render_options_section(&mut page).unwrap();
    if cmd.get_subcommands().next().is_some() {
        man.render_subcommands_section(&mut page).unwrap();
    }
    let after = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut notes = String::new();
    for para in after.split("\n\n") {
        let (title, body) = if let Some(rest) = para.strip_prefix("Examples:\n") {
            (
                "EXAMPLES",
                rest.lines().map(str::trim).collect::<Vec<_>>().join("\n"),
            )
        } else if para.contains("Exit status:") {
            ("EXIT STATUS", para.to_string())
        } else {
            notes += para;
            notes += "\n";
            continue;
        };
        let body = roff_text(&body);
        let nofill = title == "EXAMPLES";
        page.extend_from_slice(format!(".SH \"{title}\"\n").as_bytes());
        if nofill {
            page.extend_from_slice(format!(".nf\n{body}\n.fi\n").as_bytes());
        } else {
            page.extend_from_slice(format!("{body}\n").as_bytes());
        }
    }
    if !notes.trim().is_empty() {
        page.extend_from_slice(format!(".SH NOTES\n{}\n", roff_text(notes.trim())).as_bytes());
    }
    let refs: Vec<String> = see_also.iter().map(|p| format!("\\fB{p}\\fR(1)")).collect();
    page.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", ")).as_bytes());
    if let Some(v) = cmd.get_version() {
        page.extend_from_slice(format!(".SH VERSION\nv{v}\n").as_bytes());
    }
    page
}

/// Every generated file: path relative to the crate root, and contents.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let cmds = commands();
    let mut pages: Vec<String> = Vec::new();
    for cmd in &cmds {
        pages.push(cmd.get_name().to_string());
        for sub in cmd.get_subcommands() {
            pages.push(format!("{}-{}", cmd.get_name(), sub.get_name()));
        }
    }
    for cmd in cmds {
        let name = cmd.get_name().to_string();
        let others = |me: &str| {
            pages
                .iter()
                .filter(|p| *p != me)
                .cloned()
                .collect::<Vec<_>>()
        };
        files.push((
            PathBuf::from(format!("man/{name}.1")),
            man_page(&cmd, &others(&name)),
        ));
        for sub in cmd.get_subcommands() {
            let sub_name = format!("{name}-{}", sub.get_name());
            let leaked: &'static str = Box::leak(sub_name.clone().into_boxed_str());
            let sub = sub.clone().name(leaked).version(env!("CARGO_PKG_VERSION"));
            files.push((
                PathBuf::from(format!("man/{sub_name}.1")),
                man_page(&sub, &others(&sub_name)),
            ));
        }
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut out);
            if shell == Shell::Bash {
                out = bash_names_fixed(&name, out);
            }
            files.push((PathBuf::from(format!("completions/{file}")), out));
        }
    }
    files
}

/// clap_complete's bash script names a hyphenated binary's subcommand cases
/// `rwkv__subcmd__state__subcmd__feed` while it sets `rwkv__state__subcmd__feed`, so no
/// subcommand's flags complete: name the cases as they are set.
fn bash_names_fixed(name: &str, script: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(script).expect("a UTF-8 script");
    let wrong = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", name.replace('-', "__"));
    text.replace(&wrong, &right).into_bytes()
}

/// What bash completes for `words` (the last one being completed) with the generated
/// script of `bin`.
fn bash_completes(bin: &str, words: &[&str]) -> Vec<String> {
    let rel = PathBuf::from(format!("completions/{bin}.bash"));
    let text = generated().into_iter().find(|(p, _)| *p == rel).unwrap().1;
    let script = std::env::temp_dir().join(format!("{bin}-{}.bash", std::process::id()));
    std::fs::write(&script, text).unwrap();
    let func = format!("_{}", bin.replace('-', "__"));
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let n = words.len();
    let cmd = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; {func} {bin} '{}' '{}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        n - 1,
        words[n - 1],
        words[n - 2],
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", &cmd])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_every_tools_flags_and_subcommands() {
    let got = bash_completes("rwkv-state", &["rwkv-state", "feed", "--m"]);
    assert_eq!(got, vec!["--model"]);
    let got = bash_completes("rwkv-state", &["rwkv-state", "di"]);
    assert_eq!(got, vec!["diff"]);
    let got = bash_completes("rwkv-state", &["rwkv-state", "diff", "--"]);
    assert!(got.contains(&"--json".to_string()), "{got:?}");
    let got = bash_completes("rwkv-gen", &["rwkv-gen", "--temp"]);
    assert_eq!(got, vec!["--temperature"]);
    let got = bash_completes("rwkv-score", &["rwkv-score", "--per"]);
    assert_eq!(got, vec!["--per-token"]);
}

/// Every page cited in SEE ALSO exists; no section is left as clap's "EXTRA".
#[test]
fn man_pages_cite_pages_that_exist() {
    let files = generated();
    let names: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| {
            p.strip_prefix("man")
                .ok()?
                .to_str()?
                .strip_suffix(".1")
                .map(|n| n.trim_start_matches('/').to_string())
        })
        .collect();
    for (path, page) in files.iter().filter(|(p, _)| p.starts_with("man")) {
        let text = String::from_utf8_lossy(page);
        assert!(!text.contains(".SH EXTRA"), "{}", path.display());
        for cited in text
            .split("\\fB")
            .skip(1)
            .filter_map(|s| s.split_once("\\fR(1)"))
            .map(|(n, _)| n)
        {
            assert!(
                names.iter().any(|n| n == cited),
                "{} cites {cited}(1)",
                path.display()
            );
        }
        assert!(
            text.contains(".SH \"EXIT STATUS\"") || path.to_string_lossy().contains('-'),
            "{}",
            path.display()
        );
    }
    assert!(!names.iter().any(|n| n.ends_with("-help")));
}

#[test]
fn man_pages_and_completions_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let regenerate = std::env::var_os("RWKV_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (rel, want) in generated() {
        let path = root.join(&rel);
        if regenerate {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (run `RWKV_REGENERATE=1 cargo test --test generated`): {stale:?}"
    );
}

/// The synopsis names each option's value, as `--help` does.
#[test]
fn man_synopsis_names_the_values() {
    let page = String::from_utf8(man_page(&rwkv::cli::gen::Args::command(), &[])).unwrap();
    let synopsis = page
        .lines()
        .skip_while(|l| *l != ".SH SYNOPSIS")
        .nth(1)
        .unwrap();
    for want in [
        r"[\fB\-p\fR|\fB\-\-prompt\fR \fITEXT\fR]",
        r"[\fB\-\-think\fR[=\fISHOWN\fR]]",
        r"[\fB\-\-lines\fR]",
    ] {
        assert!(synopsis.contains(want), "{want} not in {synopsis}");
    }
}
