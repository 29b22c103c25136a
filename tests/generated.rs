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

/// Every generated file: path relative to the crate root, and contents.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .unwrap();
        files.push((PathBuf::from(format!("man/{name}.1")), page));
        for sub in cmd.get_subcommands() {
            let sub_name = format!("{name}-{}", sub.get_name());
            let mut page = Vec::new();
            let leaked: &'static str = Box::leak(sub_name.clone().into_boxed_str());
            let sub = sub.clone().name(leaked);
            clap_mangen::Man::new(sub).render(&mut page).unwrap();
            files.push((PathBuf::from(format!("man/{sub_name}.1")), page));
        }
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut out);
            files.push((PathBuf::from(format!("completions/{file}")), out));
        }
    }
    files
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
