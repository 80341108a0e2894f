use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use doka::app::{self, exit};
use doka::config;

/// Kafka → Amazon Kinesis, across AWS accounts, without losing a record.
#[derive(Parser)]
#[command(name = "doka", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The YAML config file.
    #[arg(long, short, env = "DOKA_CONFIG", default_value = "doka.yaml")]
    config: PathBuf,
    /// A profile from the file's `profiles:` section, applied over its base keys.
    #[arg(long, short, env = "DOKA_PROFILE")]
    profile: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured topics and deliver every record to the Kinesis stream.
    Run(ConfigArgs),
    /// Print the effective configuration (file + profile + environment) with secrets redacted.
    Config(ConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Run(args) | Command::Config(args)) = &cli.command;
    let config = match config::load(&args.config, args.profile.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match cli.command {
        Command::Config(_) => {
            print!("{}", config.to_redacted_yaml());
            ExitCode::from(exit::CLEAN)
        }
        Command::Run(args) => {
            doka::telemetry::init(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(exit::FAILURE);
                }
            };
            let code = runtime.block_on(app::run(config, args.profile));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            ExitCode::from(code)
        }
    }
}
