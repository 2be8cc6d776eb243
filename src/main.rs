#![forbid(unsafe_code)]

use clap::Parser;
use clap::error::ErrorKind;

use precheck_server::cli::Cli;

fn main() -> std::process::ExitCode {
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
            return std::process::ExitCode::from(2);
        }
    };
    cli.init_logging();
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `submit` has said why already.
        Err(e)
            if e.downcast_ref::<precheck_server::cli::submit::Exit>()
                .is_some() =>
        {
            let code = e
                .downcast_ref::<precheck_server::cli::submit::Exit>()
                .map_or(1, |exit| exit.0);
            std::process::ExitCode::from(code)
        }
        // The reader of stdout has gone (`| head`): nothing to say, and no one to say it to.
        Err(e) if precheck_server::cli::is_broken_pipe(&e) => {
            std::process::ExitCode::from(precheck_server::cli::BROKEN_PIPE_EXIT)
        }
        Err(e) => {
            eprintln!("precheck-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
