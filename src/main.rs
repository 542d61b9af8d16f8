use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use clap::Parser;

use ringcast::cli::{BenchArgs, Cli, Command, PublishArgs, TokenArgs};
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
                    // Not eprintln!: a closed stderr must not turn this into a panic.
                    let _ = writeln!(std::io::stderr(), "ringcast: {e}");
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
        Command::Bench(args) => bench(*args),
        Command::Token(args) => token(args),
        Command::Doctor(args) if args.reference_sysctl => {
            print!(
                "{}",
                ringcast::tuning::sysctl_file(&ringcast::tuning::Host::REFERENCE)
            );
            ExitCode::SUCCESS
        }
        Command::Doctor(args) if args.sysctl => {
            let host = ringcast::doctor::this_host(args.connections);
            print!("{}", ringcast::tuning::sysctl_file(&host));
            ExitCode::SUCCESS
        }
        Command::Doctor(args) => {
            let checks = ringcast::doctor::run(args.connections);
            let (report, code) = ringcast::doctor::report(args.connections, &checks);
            print!("{report}");
            ExitCode::from(code as u8)
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let Ok(ttl) = ringcast::config::parse_duration(&args.ttl) else {
        eprintln!(
            "ringcast token: invalid --ttl '{}': expected e.g. 15m, 1h",
            args.ttl
        );
        return ExitCode::from(2);
    };
    match ringcast::auth::mint(&args.secret_file, &args.channels, ttl, args.sub) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast token: {e}");
            ExitCode::from(1)
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    let duration = |s: &str, flag: &str| {
        ringcast::config::parse_duration(s).map_err(|why| format!("invalid {flag} '{s}': {why}"))
    };
    let parsed = (|| {
        Ok::<_, String>(ringcast::bench::BenchOptions {
            url: args.url.clone(),
            connections: args.connections,
            threads: args.threads,
            processes: args.processes,
            source_ips: args.source_ips.clone(),
            connect_rate: args.connect_rate,
            slow: args.slow,
            feed: args.feed.parse()?,
            channel: args.channel.clone(),
            size: args.size,
            compression: args.compression,
            sse: args.transport == "sse",
            rates: args.rate.clone(),
            duration: duration(&args.duration, "--duration")?,
            drain: duration(&args.drain, "--drain")?,
            server_pid: args.server_pid,
            server_cpu: args.server_cpu,
            sweep: args.sweep,
            min_ratio: args.min_ratio,
            max_p99: duration(&args.max_p99, "--max-p99")?,
            json: args.json,
            worker_index: args.worker_index,
            argv: std::env::args().skip(1).collect(),
        })
    })();
    let options = match parsed {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ringcast bench: {e}");
            return ExitCode::from(2);
        }
    };
    match ringcast::bench::run(&options) {
        Ok(Some(report)) => {
            print!("{}", ringcast::bench::summary(&report));
            if options.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn publish(args: PublishArgs) -> ExitCode {
    let target = match (args.redis, args.udp, args.unix) {
        (Some(url), _, _) => Target::Redis {
            url,
            prefix: args.redis_prefix,
            history: args.history,
        },
        (None, Some(addr), _) => Target::Udp(addr),
        (None, None, Some(path)) => Target::Unix(path),
        (None, None, None) => Target::Unix("./ringcast.sock".into()),
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
/// Losing the log sink (a closed pipe: `ringcast serve | head`) never takes the
/// server down: a line that cannot be written is dropped, not reported on the
/// same broken stderr (which would panic).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RINGCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
