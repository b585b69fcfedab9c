//! The `portcullis` command line. Exit codes: 0 success, 1 runtime failure, 2 invalid
//! configuration or usage (for `reload`: the daemon refused the new configuration),
//! configuration or usage, 3 `policy explain` denied the request.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use portcullis::{ca, config, control, daemon, dataplane, hostcert, policy, recording, split_tunnel};
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
    /// Ask a running daemon to reload its configuration and say whether it took it: exit 0
    /// accepted (the new generation is printed), 2 refused (the previous one keeps serving).
    /// Without a control socket (an older daemon), the daemon is sent SIGHUP.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the sessions a running daemon is relaying now.
    Sessions {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a live session: the user sees the reason; audited as `session.terminated` with
    /// who asked. Exit 1 if no such session is live.
    Terminate {
        #[arg(long, short)]
        config: PathBuf,
        /// The session id (`portcullis sessions`, the audit trail's `session`).
        session: String,
        /// Shown to the user and audited.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The account's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// WARP-style split-tunnel arithmetic: the minimal prefix list covering the included
    /// ranges minus the excluded ones (IPv4 and IPv6).
    SplitTunnel {
        #[arg(long, num_args = 1.., required = true)]
        include: Vec<String>,
        #[arg(long, num_args = 1..)]
        exclude: Vec<String>,
    },
    /// Write a recording key pair (`sshkey`, `sshkey.pub`) in ssh-log-cli's format.
    Keygen {
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Decrypt a session log into ssh-log-cli's ZIP layout. What it proves about itself
    /// (intact and signed, unsigned, ended without a trailer, truncated, altered) is said on
    /// stderr; every block that authenticates is written either way.
    Decrypt(LogFiles),
    /// Check a session log's trailer: complete, unaltered and signed by the gateway's
    /// recording-signing key. Exit 0 intact and signed by --signer, 4 unsigned, 5 ended
    /// without a trailer (a crash, or not written by portcullis), 6 truncated, 7 altered
    /// (edited, extended, or signed by another key); 1 could not read it.
    Verify {
        /// The gateway's recording-signing public key (`portcullis recording pubkey`).
        #[arg(long)]
        signer: PathBuf,
        #[arg(long, short)]
        input: PathBuf,
        /// The recording private key: also authenticate every block (without it, the
        /// framing and digest are checked, which needs no secret).
        #[arg(long, short)]
        key: Option<PathBuf>,
    },
    /// The gateway's recording-signing key.
    #[command(subcommand)]
    Recording(RecordingCommand),
    /// Export a session log.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Play a session log in the terminal with its original timing.
    Replay {
        input: PathBuf,
        #[arg(long, short)]
        key: PathBuf,
        /// Speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
        speed: f64,
        /// Cap idle gaps at this many seconds.
        #[arg(long, value_parser = positive_seconds)]
        max_idle: Option<f64>,
        /// The gateway's recording-signing public key, to check the log against.
        #[arg(long)]
        signer: Option<PathBuf>,
        /// Pass the output as recorded, including what makes a terminal act rather than
        /// draw (clipboard writes, titles, queries it answers by typing): for a log you trust.
        #[arg(long)]
        raw: bool,
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

// `portcullis generate …` (for packaging: `cargo xtask dist`) writes the manual pages and
// shell completions made from `Cli`. It is parsed apart from `Cli`, so that what it writes
// does not offer it (clap_complete lists hidden subcommands too).
#[derive(Parser)]
#[command(
    name = "portcullis generate",
    bin_name = "portcullis generate",
    about = "Write the manual pages or shell completions (for packaging)"
)]
enum Generate {
    /// One roff page per command (`portcullis.1`, `portcullis-run.1`, …) into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL into DIR, named as that shell expects.
    Completions {
        shell: clap_complete::Shell,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Decide a request as the gateway would, and say which policy and rule decided and why
    /// the others did not. Exit 0 if allowed, 3 if denied.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's source address (its identity comes from the registry, as in the
        /// gateway) ...
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// ... or an identity by email, for "what if" questions.
        #[arg(long)]
        email: Option<String>,
        /// The vnet the client is in.
        #[arg(long, default_value = "default")]
        vnet: String,
        /// Target hostname or address.
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// The unix login requested.
        #[arg(long)]
        login: String,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// asciicast v2, for `asciinema play`.
    Asciicast(LogFiles),
}

/// A session log, its private key, and where to write what comes out.
#[derive(clap::Args)]
struct LogFiles {
    #[arg(long, short)]
    key: PathBuf,
    #[arg(long, short)]
    input: PathBuf,
    #[arg(long, short)]
    output: PathBuf,
    /// The gateway's recording-signing public key (`portcullis recording pubkey`): the
    /// verdict then says whether that key signed the log.
    #[arg(long)]
    signer: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RecordingCommand {
    /// Print the public half of [account] recording_signing_key, for `verify --signer`.
    Pubkey {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the account secret, the CA key and the recording-signing key named in
    /// [account] (kept if they exist).
    Init {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the CA public key line for the targets' `TrustedUserCAKeys` / `ca.pub`.
    Pubkey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the `@cert-authority` lines for users' known_hosts that trust the gateway's host
    /// certificates ([ca] host_certificates): one per protected hostname, naming it and its
    /// addresses (`[name]:port` for ports other than 22).
    KnownHosts {
        #[arg(long, short)]
        config: PathBuf,
        /// One line for every host (`*`) instead: simpler to distribute, but the client then
        /// trusts the CA to vouch for any server it connects to.
        #[arg(long)]
        any_host: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in the journal or a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // netlink-packet-route warns about every attribute a newer kernel added, at every
            // interface dump (the dataplane's recheck does one every 2 s): not ours to act on.
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .init();
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "generate") {
        // "generate" stands where clap expects the program's name.
        return exit(generate(&Generate::parse_from(std::env::args_os().skip(1))));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => {
            runtime().and_then(|rt| rt.block_on(async { Ok(daemon::run(&config).await?) }))
        }
        Command::Down { config } => runtime().and_then(|rt| rt.block_on(down(&config))),
        Command::Stats { config, json } => stats(&config, json),
        Command::Reload { config } => return reload(&config),
        Command::Sessions { config, json } => sessions(&config, json),
        Command::Terminate {
            config,
            session,
            reason,
        } => terminate(&config, session, reason),
        Command::Keygen { output } => keygen(&output),
        Command::Decrypt(f) => decrypt(&f),
        Command::Export(ExportCommand::Asciicast(f)) => export_cast(&f),
        Command::Replay {
            input,
            key,
            speed,
            max_idle,
            signer,
            raw,
        } => replay(&input, &key, signer.as_deref(), speed, max_idle, raw),
        Command::Verify { signer, input, key } => return verify(&signer, &input, key.as_deref()),
        Command::Recording(RecordingCommand::Pubkey { config }) => recording_pubkey(&config),
        Command::SplitTunnel { include, exclude } => split(&include, &exclude),
        Command::Ca(CaCommand::Init { config }) => ca_init(&config),
        Command::Ca(CaCommand::Pubkey { config }) => ca_pubkey(&config),
        Command::Ca(CaCommand::KnownHosts { config, any_host }) => ca_known_hosts(&config, any_host),
        Command::Policy(PolicyCommand::Explain {
            config,
            source,
            email,
            vnet,
            target,
            port,
            login,
        }) => {
            return match explain(&config, source, email.as_deref(), &vnet, &target, port, &login) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(3),
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    exit(result)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(what: &Generate) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let dir = match what {
        Generate::Man { dir } | Generate::Completions { dir, .. } => dir,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    match what {
        Generate::Man { dir } => clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("write man pages into {}", dir.display()))?,
        Generate::Completions { shell, dir } => {
            let path = clap_complete::generate_to(*shell, &mut cmd, "portcullis", dir)
                .with_context(|| format!("write {shell} completions into {}", dir.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
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
            for w in &l.warnings {
                eprintln!("portcullis: warning: {}: {w}", path.display());
            }
            let vnets = l.targets.vnets.len();
            let addrs = l.targets.addrs.len();
            let ports: usize = l.targets.addrs.iter().map(|a| a.ports.len()).sum();
            println!(
                "{}: ok ({vnets} vnets, {addrs} target addresses, {ports} protected ports, {} identities, {} policies)",
                path.display(),
                l.identities.len(),
                l.policies.len()
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

/// Sends `req` to the daemon of the configuration at `path`.
fn ask(path: &std::path::Path, req: &control::Request) -> anyhow::Result<control::Answer> {
    let l = config::load(path)?;
    ask_at(&control::path(&l.config.dataplane), req)
}

/// Sends `req` to the daemon listening on `socket`.
fn ask_at(socket: &std::path::Path, req: &control::Request) -> anyhow::Result<control::Answer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    Ok(rt.block_on(control::ask(socket, req))?)
}

fn reload(path: &std::path::Path) -> ExitCode {
    let l = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            return ExitCode::from(2);
        }
    };
    let socket = control::path(&l.config.dataplane);
    match ask_at(&socket, &control::Request::Reload) {
        Ok(control::Answer::Reloaded { generation }) => {
            println!("reloaded: configuration generation {generation} is in force");
            ExitCode::SUCCESS
        }
        Ok(control::Answer::ReloadRejected { error }) => {
            eprintln!(
                "portcullis: the daemon refused the configuration; the previous one keeps serving: {error}"
            );
            ExitCode::from(2)
        }
        Ok(other) => {
            eprintln!("portcullis: unexpected answer: {other:?}");
            ExitCode::FAILURE
        }
        // No control socket: a daemon from before it, asked the old way.
        Err(e) if !socket.exists() => match sighup(&l) {
            Ok(pid) => {
                println!("configuration is valid; asked the daemon (pid {pid}) to reload (no control socket: {e:#})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sighup(l: &config::Loaded) -> anyhow::Result<i32> {
    let lock = l
        .config
        .dataplane
        .state_dir
        .join(&l.config.dataplane.instance)
        .join("lock");
    let file = std::fs::File::open(&lock)
        .with_context(|| format!("open {} (is the daemon running?)", lock.display()))?;
    // The pid is only the daemon's while the daemon holds the lock: a lock anyone can take
    // is a stopped daemon's, and its pid may be another process's by now (SIGHUP kills most).
    // SAFETY: flock on a descriptor `file` keeps open.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    } == 0
    {
        anyhow::bail!("no daemon is running for {} (its lock is free)", lock.display());
    }
    let pid: i32 = std::io::read_to_string(&file)
        .with_context(|| format!("read {}", lock.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", lock.display()))?;
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!("signal pid {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(pid)
}

fn sessions(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let list = match ask(path, &control::Request::Sessions)? {
        control::Answer::Sessions { sessions } => sessions,
        control::Answer::Error { error } => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<26} {:<24} {:<22} {:<8} {:<16} {:<10} {:<20} {:>12} {:>12} {:>4}  recording",
        "session",
        "identity",
        "source",
        "vnet",
        "target",
        "login",
        "started",
        "to_client",
        "to_target",
        "chan"
    );
    for s in &list {
        let w = &s.who;
        println!(
            "{:<26} {:<24} {:<22} {:<8} {:<16} {:<10} {:<20} {:>12} {:>12} {:>4}  {}",
            w.session,
            w.identity,
            w.source.to_string(),
            w.vnet,
            w.target,
            w.login,
            w.started,
            s.bytes_to_client,
            s.bytes_to_target,
            s.channels,
            s.recordings
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}

fn terminate(path: &std::path::Path, session: String, reason: Option<String>) -> anyhow::Result<()> {
    match ask(path, &control::Request::Terminate { session, reason })? {
        control::Answer::Terminated { session } => {
            println!("session {session} is ending");
            Ok(())
        }
        control::Answer::NoSuchSession { session } => anyhow::bail!("no live session {session}"),
        control::Answer::Error { error } => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

fn split(include: &[String], exclude: &[String]) -> anyhow::Result<()> {
    let parse = |v: &[String]| -> anyhow::Result<Vec<split_tunnel::Cidr>> {
        v.iter()
            .map(|s| s.parse::<split_tunnel::Cidr>().map_err(anyhow::Error::from))
            .collect()
    };
    for c in split_tunnel::split(&parse(include)?, &parse(exclude)?) {
        println!("{c}");
    }
    Ok(())
}

fn account(l: &config::Loaded) -> anyhow::Result<&config::Account> {
    l.account
        .as_ref()
        .with_context(|| format!("{}: no [account] section names the CA key", l.path.display()))
}

fn ca_init(path: &std::path::Path) -> anyhow::Result<()> {
    let l = config::load_for_init(path)?;
    for o in ca::init(account(&l)?)? {
        match o {
            ca::Outcome::Created(p) => println!("created {}", p.display()),
            ca::Outcome::Kept(p) => println!("kept existing {}", p.display()),
        }
    }
    if let Some(p) = &account(&l)?.recording_signing_key {
        match recording::signing::generate(p)? {
            true => println!("created {}", p.display()),
            false => println!("kept existing {}", p.display()),
        }
    }
    println!("{}", ca::public_line(&account(&l)?.ca_key)?);
    Ok(())
}

fn ca_pubkey(path: &std::path::Path) -> anyhow::Result<()> {
    let l = config::load(path)?;
    println!("{}", ca::public_line(&account(&l)?.ca_key)?);
    Ok(())
}

fn ca_known_hosts(path: &std::path::Path, any_host: bool) -> anyhow::Result<()> {
    let l = config::load(path)?;
    if !l.config.ca.host_certificates {
        eprintln!(
            "portcullis: warning: {}: [ca] host_certificates is off, so the gateway presents no host certificates; these lines take effect once it is on",
            path.display()
        );
    }
    let ca_line = ca::public_line(&account(&l)?.ca_key)?;
    for line in hostcert::known_hosts_lines(&ca_line, &l.targets, any_host) {
        println!("{line}");
    }
    Ok(())
}

fn explain(
    path: &std::path::Path,
    source: Option<std::net::IpAddr>,
    email: Option<&str>,
    vnet: &str,
    target: &str,
    port: u16,
    login: &str,
) -> anyhow::Result<bool> {
    let l = config::load(path)?;
    let v = l
        .targets
        .vnets
        .iter()
        .find(|v| v.name == vnet)
        .with_context(|| format!("no vnet {vnet:?}"))?;
    let hostname = match target.parse::<std::net::IpAddr>() {
        Ok(ip) => l
            .targets
            .lookup(v.id, ip)
            .map(|t| t.target.clone())
            .with_context(|| format!("{ip} is not a target in vnet {vnet:?}"))?,
        Err(_) => target.to_string(),
    };
    let source = source.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let identity = match email {
        Some(e) => l
            .identities
            .by_email(e)
            .cloned()
            .unwrap_or(portcullis::identity::Identity {
                email: e.to_string(),
                groups: vec![],
            }),
        None => match l.identities.lookup(v.id, source) {
            Some(i) => i.clone(),
            None => {
                println!("deny (no_identity): no identity uses {source} in vnet {vnet:?}");
                return Ok(false);
            }
        },
    };
    let r = policy::Request {
        identity: &identity,
        source,
        vnet,
        target: &hostname,
        port,
        login,
    };
    let d = l.policies.explain(&r);
    println!(
        "request: {} ({}) → {hostname}:{port} as {login:?} in vnet {vnet:?}",
        identity.email, source
    );
    for t in &d.trace {
        println!("  {t}");
    }
    match &d.allow {
        Ok(()) => println!(
            "allow: policy {:?}, {}",
            d.policy.unwrap_or_default(),
            d.rule.unwrap_or_default()
        ),
        Err(reason) => println!(
            "deny ({}){}",
            reason.as_str(),
            d.policy.map(|p| format!(": policy {p:?}")).unwrap_or_default()
        ),
    }
    Ok(d.allow.is_ok())
}

fn keygen(dir: &std::path::Path) -> anyhow::Result<()> {
    let (sk, pk) = recording::keys::generate(dir)?;
    println!("wrote {} (private, 0600) and {}", sk.display(), pk.display());
    println!(
        "set [account] recording_public_key = {:?} on the gateway; keep {} offline",
        pk.display().to_string(),
        sk.display()
    );
    Ok(())
}

/// Decrypts, reporting damage and the log's verdict on stderr; what authenticated is still
/// returned.
fn open_log(
    key: &std::path::Path,
    input: &std::path::Path,
    signer: Option<&std::path::Path>,
) -> anyhow::Result<recording::reader::Decrypted> {
    let sk = recording::keys::load_private(key)?;
    let signer = signer.map(recording::signing::load_public).transpose()?;
    let d = recording::reader::decrypt_checked(input, &sk, signer.as_ref())?;
    if let Some(damage) = &d.damage {
        eprintln!(
            "portcullis: {}: {damage}; recovered the {} block(s) before it",
            input.display(),
            d.blocks
        );
    }
    let warn = if d.verdict.is_intact() { "" } else { "warning: " };
    eprintln!("portcullis: {}: {warn}{}", input.display(), d.verdict);
    Ok(d)
}

fn decrypt(f: &LogFiles) -> anyhow::Result<()> {
    let d = open_log(&f.key, &f.input, f.signer.as_deref())?;
    recording::reader::write_zip(&d, &f.output)?;
    println!("wrote {} ({} records)", f.output.display(), d.records.len());
    Ok(())
}

fn export_cast(f: &LogFiles) -> anyhow::Result<()> {
    let d = open_log(&f.key, &f.input, f.signer.as_deref())?;
    let mut private = recording::reader::Private::create(&f.output)?;
    std::io::Write::write_all(private.file(), recording::reader::asciicast(&d).as_bytes())
        .with_context(|| format!("write {}", f.output.display()))?;
    private.done()?;
    println!("wrote {}", f.output.display());
    Ok(())
}

fn replay(
    input: &std::path::Path,
    key: &std::path::Path,
    signer: Option<&std::path::Path>,
    speed: f64,
    max_idle: Option<f64>,
    raw: bool,
) -> anyhow::Result<()> {
    let d = open_log(key, input, signer)?;
    let idle = max_idle.map(std::time::Duration::from_secs_f64);
    let mut out = std::io::stdout().lock();
    recording::reader::replay(&d, &mut out, speed, idle, raw)?;
    // The verdict again at the end: what was replayed may have cleared the screen the first
    // one was on, or left the terminal drawing invisibly (hidden text, another character
    // set, the other screen); the terminal is put back first.
    if std::io::IsTerminal::is_terminal(&out) {
        std::io::Write::write_all(&mut out, recording::terminal::RESET)?;
        std::io::Write::flush(&mut out)?;
    }
    eprintln!("portcullis: {}: end of replay; {}", input.display(), d.verdict);
    Ok(())
}

/// A speed or a number of seconds: above zero, at most a year's seconds.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3.2e7 => Ok(v),
        Ok(_) => Err("must be a number above 0 and at most 32000000".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `portcullis verify`: the verdict on stdout, its exit code (see the command's help).
fn verify(signer: &std::path::Path, input: &std::path::Path, key: Option<&std::path::Path>) -> ExitCode {
    let run = || -> anyhow::Result<recording::trailer::Verdict> {
        let signer = recording::signing::load_public(signer)?;
        let sk = key.map(recording::keys::load_private).transpose()?;
        Ok(recording::reader::judge(input, sk.as_ref(), Some(&signer))?)
    };
    match run() {
        Ok(v) => {
            println!("{}: {v}", input.display());
            ExitCode::from(v.exit_code())
        }
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn recording_pubkey(path: &std::path::Path) -> anyhow::Result<()> {
    let l = config::load(path)?;
    let p = account(&l)?.recording_signing_key.as_ref().with_context(|| {
        format!(
            "{}: [account] has no recording_signing_key (add one, then run `portcullis ca init`)",
            l.path.display()
        )
    })?;
    println!("{}", recording::signing::load(p)?.public_line());
    Ok(())
}
