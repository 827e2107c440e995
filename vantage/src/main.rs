use std::process::ExitCode;

use clap::Parser;
use vantage::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_config {
        return match serde_json::to_string_pretty(&cli) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vantage: {e}");
                ExitCode::FAILURE
            }
        };
    }
    env_logger::Builder::new().parse_filters(&cli.log_level).format_target(false).init();

    match vantage::daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vantage: {}", vantage::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
