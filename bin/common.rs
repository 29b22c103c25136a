//! The `main` every binary shares: parse flags, run, print errors on stderr, exit with the
//! documented code.

use rwkv::cli::{self, signal, CliError};

pub fn main_with<A: clap::Parser>(name: &str, run: fn(&A) -> Result<(), CliError>) -> ! {
    signal::install();
    let args = match cli::parse_args::<A>() {
        Ok(a) => a,
        Err((code, msg)) => {
            if code == cli::exit::OK {
                print!("{msg}");
            } else {
                eprint!("{msg}");
            }
            std::process::exit(code);
        }
    };
    let code = match run(&args) {
        Ok(()) => cli::exit::OK,
        Err(e) => {
            if !e.msg.is_empty() {
                eprintln!("{name}: {}", e.msg);
            }
            e.code
        }
    };
    std::process::exit(code);
}
