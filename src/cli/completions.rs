//! `data-ingestion-api completions SHELL`: the shell completion script for every command and
//! flag, generated from the same definitions the parser uses, so it cannot drift.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use clap_complete::Shell;

use super::EXIT_ERROR;

pub const AFTER_HELP: &str = "\
Install (then open a new shell):
  bash        data-ingestion-api completions bash > ~/.local/share/bash-completion/completions/data-ingestion-api
  zsh         data-ingestion-api completions zsh > ~/.zfunc/_data-ingestion-api
              (with `fpath+=~/.zfunc` before `compinit` in ~/.zshrc)
  fish        data-ingestion-api completions fish > ~/.config/fish/completions/data-ingestion-api.fish
  elvish      data-ingestion-api completions elvish >> ~/.config/elvish/rc.elv
  powershell  data-ingestion-api completions powershell | Out-String | Invoke-Expression
              (add that line to $PROFILE to keep it)";

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Writes the script for `command` (the whole command line, from the binary) to stdout.
pub fn main(args: CompletionsArgs, mut command: clap::Command) -> ExitCode {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("completions: cannot write the script: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
