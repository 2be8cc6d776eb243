#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use precheck_server::cli::{BROKEN_PIPE_EXIT, Cli, is_broken_pipe};

/// Parses the command line and runs the command, whose exit code it is; an error is printed
/// here, on one line, as exit code 1.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line that says what is wrong; `--help` has the rest.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments");
            let reason = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("precheck-server: {reason} (see precheck-server --help)");
            return ExitCode::from(2);
        }
    };
    cli.init_logging();
    match cli.run() {
        Ok(code) => code,
        // The reader of stdout has gone (`| head`): nothing to say, and no one to say it to.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            eprintln!("precheck-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
