//! `fsm-redirect-cni`: the chained CNI plugin (see the crate's `plugin`).
//! Reads the CNI environment and stdin, prints the result or a CNI error
//! object on stdout; logs on stderr.

use std::{io::Read as _, process::ExitCode};

use redirect_cni::spec::{CniError, Env, code};

fn main() -> ExitCode {
    let outcome = Env::from_vars(|k| std::env::var(k).ok()).and_then(|env| {
        let mut stdin = Vec::new();
        std::io::stdin()
            .read_to_end(&mut stdin)
            .map_err(|e| CniError::new(code::IO_FAILURE, "reading the network configuration from stdin", e.to_string()))?;
        redirect_cni::plugin::run(&env, &stdin)
    });
    match outcome {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::to_string(&e).expect("plain data"));
            ExitCode::FAILURE
        }
    }
}
