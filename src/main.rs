use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use ringcast::cli::{Cli, Command, PublishArgs};
use ringcast::config::{LogFormat, ServeConfig};
use ringcast::publish::{PublishOptions, Target};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match ServeConfig::load(args.config.as_deref(), &args.given()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringcast: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            match ringcast::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Publish(args) => publish(args),
        Command::Doctor(args) => {
            let checks = ringcast::doctor::run(args.connections);
            let (report, code) = ringcast::doctor::report(args.connections, &checks);
            print!("{report}");
            ExitCode::from(code as u8)
        }
    }
}

fn publish(args: PublishArgs) -> ExitCode {
    let target = match (args.udp, args.unix) {
        (Some(addr), _) => Target::Udp(addr),
        (None, Some(path)) => Target::Unix(path),
        (None, None) => Target::Unix("./ringcast.sock".into()),
    };
    let options = PublishOptions {
        channel: args.channel,
        target,
        text: args.text,
    };
    match ringcast::publish::run(&options, args.data.as_deref()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast publish: {}", e.message);
            ExitCode::from(if e.usage { 2 } else { 1 })
        }
    }
}

/// Logs go to stderr; `RINGCAST_LOG` (e.g. `debug`, `ringcast=trace`) sets the level.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RINGCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
