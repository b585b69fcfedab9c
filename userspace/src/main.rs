//! The `portcullis` command line. Exit codes: 0 success, 1 runtime failure, 2 invalid
//! configuration or usage.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::{config, daemon, dataplane};
use portcullis_common::verdict;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Transparent SSH interception gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the dataplane and serve steered connections until SIGTERM (SIGHUP reloads).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and print what it protects.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the dataplane of a stopped daemon (programs, maps, routing rules, sysctls).
    /// Until then protected ports stay closed.
    Down {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Per-target and per-verdict packet counters from the pinned maps.
    Stats {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => {
            runtime().and_then(|rt| rt.block_on(async { Ok(daemon::run(&config).await?) }))
        }
        Command::Down { config } => runtime().and_then(|rt| rt.block_on(down(&config))),
        Command::Stats { config, json } => stats(&config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(l) => {
            let vnets = l.targets.vnets.len();
            let addrs = l.targets.addrs.len();
            let ports: usize = l.targets.addrs.iter().map(|a| a.ports.len()).sum();
            println!(
                "{}: ok ({vnets} vnets, {addrs} target addresses, {ports} protected ports)",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(2)
        }
    }
}

async fn down(path: &std::path::Path) -> anyhow::Result<()> {
    let l = config::load(path)?;
    dataplane::down(&l.config.dataplane).await?;
    println!("dataplane of instance {:?} removed", l.config.dataplane.instance);
    Ok(())
}

fn stats(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let l = config::load(path)?;
    let (c, entries) = dataplane::read_stats(&l.config.dataplane)?;
    if json {
        let mut obj = serde_json::Map::new();
        for (v, name) in verdict::NAMES.iter().enumerate() {
            obj.insert(format!("total.{name}"), c.total(v as u32).into());
        }
        for e in &entries {
            for (v, name) in verdict::NAMES.iter().enumerate() {
                let n = c.get(e.id, v as u32);
                if n != 0 {
                    obj.insert(
                        format!("{}.{}.{}.{name}", e.vnet_name, e.target, e.addr),
                        n.into(),
                    );
                }
            }
        }
        println!("{}", serde_json::Value::Object(obj));
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<40} {:>12} {:>12} {:>10}",
        "target", "vnet", "address", "steered", "other_port", "dropped"
    );
    for e in &entries {
        println!(
            "{:<24} {:<10} {:<40} {:>12} {:>12} {:>10}",
            e.target,
            e.vnet_name,
            e.addr,
            c.get(e.id, verdict::STEERED),
            c.get(e.id, verdict::OTHER_PORT),
            c.get(e.id, verdict::DROPPED)
        );
    }
    println!();
    for (v, name) in verdict::NAMES.iter().enumerate() {
        println!("total {name:<12} {:>12}", c.total(v as u32));
    }
    Ok(())
}
