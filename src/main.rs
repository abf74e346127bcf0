//! The `vipgate` command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "assets")]
use clap::CommandFactory;
use clap::{Parser, Subcommand};
use vipgate::logging::LogFormat;

/// A Layer-4 load balancer for long-lived TCP connections.
#[derive(Parser)]
#[command(name = "vipgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: error, warn, info, debug or trace (VIPGATE_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format: readable text, or one JSON object per line
    /// (VIPGATE_LOG_FORMAT overrides).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the virtual servers of a configuration until SIGTERM/SIGINT.
    Run {
        /// Configuration file; files it names are found next to it.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
        /// In an active/active group of N nodes with one configuration,
        /// this node's slice K/N of every SNAT pool's ports.
        #[arg(long, value_name = "K/N")]
        snat_share: Option<vipgate::config::SnatShare>,
    },
    /// Validate a configuration and everything it names (certificates,
    /// secrets, the admin token) and print the plan; exit 1 if invalid.
    Check {
        /// Configuration file; files it names are found next to it.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
        /// As for `run`: the SNAT ports this node would lease.
        #[arg(long, value_name = "K/N")]
        snat_share: Option<vipgate::config::SnatShare>,
    },
    /// Ask a running vipgate whether it can serve: exit 0 when every
    /// virtual listens and has a usable member, 1 otherwise (for
    /// keepalived's track_script and scripts).
    Ready {
        /// The admin endpoint, e.g. 127.0.0.1:9100; by default the one
        /// the configuration file names.
        #[arg(long)]
        admin: Option<String>,
        /// Configuration file, to find the admin endpoint.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
        /// Most time to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Upgrade the running vipgate to the binary now installed: it starts
    /// that binary with the same arguments and hands over its listening
    /// sockets and state; the old process drains. Exits 1 (and the old
    /// process serves on) if the new one cannot take over, saying why.
    /// Same as `kill -USR2 <pid>`.
    Upgrade {
        /// The admin endpoint, e.g. 127.0.0.1:9100; by default the one
        /// the configuration file names (whose token is used).
        #[arg(long)]
        admin: Option<String>,
        /// Configuration file, to find the admin endpoint and token.
        #[arg(short, long, default_value = "vipgate.toml")]
        config: PathBuf,
        /// Most time to wait for the new process to take over.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Start three simulated proxies and vipgate in front of them.
    Demo,
    /// Convert a BIG-IP configuration (bigpipe or tmsh) to vipgate TOML on
    /// stdout; what changed or was not carried over is listed on stderr.
    /// Exits 1 when no virtual server could be converted. Several files
    /// are read as one BIG-IP: `import-f5 bigip.conf bigip_base.conf
    /// partitions/*/bigip.conf`, so that a partition's virtuals find the
    /// profiles and monitors of /Common.
    ImportF5 {
        /// The BIG-IP configuration files (bigip.conf, or a bigpipe export).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or
    /// powershell (built with `--features assets`, as the package is).
    #[cfg(feature = "assets")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), as packaged in vipgate.1.
    #[cfg(feature = "assets")]
    #[command(hide = true)]
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, snat_share } => vipgate::commands::check(&config, snat_share)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Run { config, snat_share } => {
            let _logs = vipgate::logging::init(&cli.log_level, cli.log_format);
            vipgate::commands::run(&config, snat_share).map_err(anyhow::Error::from)
        }
        Command::Ready {
            admin,
            config,
            timeout,
        } => vipgate::commands::ready(admin.as_deref(), &config, timeout)
            .map(|answer| println!("{answer}"))
            .map_err(anyhow::Error::from),
        Command::Upgrade {
            admin,
            config,
            timeout,
        } => vipgate::commands::upgrade(admin.as_deref(), &config, timeout)
            .map(|answer| println!("{answer}"))
            .map_err(anyhow::Error::from),
        Command::ImportF5 { files } => vipgate::commands::import_f5(&files)
            .map(|imported| {
                print!("{}", imported.toml);
                eprint!("{}", imported.report);
            })
            .map_err(anyhow::Error::from),
        Command::Demo => {
            let _logs = vipgate::logging::init(&cli.log_level, cli.log_format);
            vipgate::commands::demo().map_err(anyhow::Error::from)
        }
        #[cfg(feature = "assets")]
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "vipgate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        #[cfg(feature = "assets")]
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
