//! The `vipgate` command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A Layer-4 load balancer for long-lived TCP connections.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: error, warn, info, debug or trace (VIPGATE_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the virtual servers of a configuration until SIGTERM/SIGINT.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
    },
    /// Validate a configuration and print the plan; exit 1 if it is invalid.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
    },
    /// Start three simulated proxies and vipgate in front of them.
    Demo,
    /// Convert a BIG-IP configuration (bigpipe or tmsh) to vipgate TOML on
    /// stdout; what changed or was not carried over is listed on stderr.
    /// Exits 1 when no virtual server could be converted.
    ImportF5 {
        /// The BIG-IP configuration file (bigip.conf, or a bigpipe export).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => vipgate::commands::check(&config)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Run { config } => {
            let _logs = vipgate::logging::init(&cli.log_level);
            vipgate::commands::run(&config).map_err(anyhow::Error::from)
        }
        Command::ImportF5 { file } => vipgate::commands::import_f5(&file)
            .map(|imported| {
                print!("{}", imported.toml);
                eprint!("{}", imported.report);
            })
            .map_err(anyhow::Error::from),
        Command::Demo => {
            let _logs = vipgate::logging::init(&cli.log_level);
            vipgate::commands::demo().map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
