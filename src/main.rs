use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use doka::app::{self, exit};
use doka::check::{self, CheckOptions, Hop, Status};
use doka::config;

/// mimalloc instead of glibc's malloc: records are allocated on the consumer thread and freed on
/// the runtime's workers, and glibc serialises such cross-thread frees on an arena lock (seen in
/// the benchmark's off-CPU profile as the consumer thread's most common wait; docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc v3's
/// `include/mimalloc.h`; the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS 10 ms after it was freed instead of mimalloc v3's default
/// second: at full speed the second kept 30–40 MiB more resident. Not at once (0): returning and
/// faulting the same pages in again cost 0.3–0.7 CPU seconds per million records
/// (docs/PERFORMANCE.md). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn purge_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; called first thing in main, before any
        // other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also write one test record (partition key `doka-check`) to each route's stream or
    /// delivery stream.
    #[arg(long)]
    write_test: bool,
    /// `json` prints one JSON document for automation instead of a line per hop.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured topics and deliver every record to its route's destination (Kinesis, Firehose or standard output).
    Run(ConfigArgs),
    /// Print the effective configuration (file + profile + environment) with secrets redacted.
    Config(ConfigArgs),
    /// Walk the chain doka needs (brokers, TLS, authentication, topics, group, AWS identity,
    /// AssumeRole, stream) and say what works and what to fix. Exit 0 when nothing failed.
    Check(CheckArgs),
}

fn main() -> ExitCode {
    purge_freed_memory_soon();
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Run(args) | Command::Config(args) => args,
        Command::Check(check) => &check.config,
    };
    let config = match config::load(&args.config, args.profile.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            match &cli.command {
                Command::Check(check) => print_check(
                    check.output,
                    &check::Report {
                        ok: false,
                        hops: vec![Hop {
                            hop: "config".into(),
                            status: Status::Fail,
                            detail: e.to_string(),
                            fix: None,
                        }],
                    },
                ),
                _ => eprintln!("error: {e}"),
            }
            return ExitCode::from(exit::CONFIG);
        }
    };
    let profile = args.profile.clone();
    match cli.command {
        Command::Config(_) => {
            print!("{}", config.to_redacted_yaml());
            ExitCode::from(exit::CLEAN)
        }
        Command::Run(_) => {
            doka::telemetry::init(&config.log);
            doka::panics::install(exit::PANIC);
            // SAFETY: single-threaded still; the runtime starts below.
            unsafe { doka::aws::export_sts_endpoint(&config.aws) };
            let Some(runtime) = runtime() else {
                return ExitCode::from(exit::FAILURE);
            };
            let code = runtime.block_on(app::run(config, profile));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            ExitCode::from(code)
        }
        Command::Check(check) => {
            // Only warnings: the hops are the output, librdkafka's own chatter is not.
            let mut log = config.log.clone();
            log.level = "warn,rdkafka=off,doka::kafka=off".into();
            doka::telemetry::init(&log);
            // SAFETY: single-threaded still; the runtime starts below.
            unsafe { doka::aws::export_sts_endpoint(&config.aws) };
            let Some(runtime) = runtime() else {
                return ExitCode::from(exit::FAILURE);
            };
            let output = check.output;
            let options = CheckOptions {
                profile,
                write_test: check.write_test,
                on_hop: Box::new(move |hop| {
                    if output == Output::Text {
                        println!("{}", check::format_hop(hop));
                    }
                }),
            };
            let report = runtime.block_on(check::run(&config, &options));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            if output == Output::Json {
                print_check(output, &report);
            }
            ExitCode::from(if report.ok {
                exit::CLEAN
            } else {
                exit::FAILURE
            })
        }
    }
}

fn print_check(output: Output, report: &check::Report) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serialises")
        ),
        Output::Text => {
            for hop in &report.hops {
                println!("{}", check::format_hop(hop));
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
