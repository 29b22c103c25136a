//! The `main` every binary shares: parse flags, run, print errors on stderr, exit with the
//! documented code.

use rwkv::cli::{self, signal, CliError};
use std::io::Write;

pub fn main_with<A: clap::Parser>(name: &str, run: fn(&A) -> Result<(), CliError>) -> ! {
    signal::install();
    let args = match cli::parse_args::<A>() {
        Ok(a) => a,
        Err((code, msg)) => {
            if code != cli::exit::OK {
                let _ = std::io::stderr().write_all(msg.as_bytes());
                std::process::exit(code);
            }
            // --help, --version: a stdout that cannot take them is an error like any other
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(msg.as_bytes()).and_then(|()| out.flush()) {
                cli::say_line(&format!("{name}: writing output: {e}"));
                std::process::exit(cli::exit::RUNTIME);
            }
            std::process::exit(code);
        }
    };
    let code = match run(&args) {
        Ok(()) => cli::exit::OK,
        Err(e) => {
            if !e.msg.is_empty() {
                cli::say_line(&format!("{name}: {}", e.msg));
            }
            e.code
        }
    };
    std::process::exit(code);
}
