use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ringcast::config::{Config, LogFormat};

/// Thread-per-core WebSocket pub/sub gateway on io_uring.
///
/// With no arguments: a `roadrunner` vhost at ws://127.0.0.1:8080/ws, the HTTP
/// API on 127.0.0.1:8081 and goridge RPC on 127.0.0.1:6001, memory broker.
#[derive(Parser, Debug)]
#[command(name = "ringcast", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// WebSocket listen address (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// HTTP API listen address (overrides server.api_listen).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<std::net::SocketAddr>,
    /// goridge RPC listen address (overrides server.rpc_listen).
    #[arg(long, value_name = "ADDR")]
    rpc_listen: Option<std::net::SocketAddr>,
    /// Number of shards (executors pinned to cores); 0 = one per core.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Directory of the state store (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Check the configuration, print it as understood, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Manage WebRocket vhosts, users, channels and worker tokens through
    /// the admin API (docs/admin.md).
    Ctl(ringcast::ctl::CtlArgs),
}

/// `--features dhat-heap`: every allocation is tracked; `dhat-heap.json`
/// is written when the gateway exits (docs/metrics.md, heap profiling).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _heap_profile = dhat::Profiler::new_heap();
    return_large_allocations_to_the_os();
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return match ringcast::ctl::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringcast ctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        },
        None => Config::default(),
    };
    if let Some(a) = cli.listen {
        config.server.listen = a;
    }
    if let Some(a) = cli.api_listen {
        config.server.api_listen = a;
    }
    if let Some(a) = cli.rpc_listen {
        config.server.rpc_listen = a;
    }
    if let Some(n) = cli.shards {
        config.server.shards = n;
    }
    if let Some(d) = cli.data_dir {
        config.server.data_dir = d;
    }
    if let Ok(token) = std::env::var("RINGCAST_ADMIN_TOKEN") {
        config.server.admin_token = Some(token).filter(|t| !t.is_empty());
    }
    if let Ok(token) = std::env::var("RINGCAST_API_TOKEN") {
        config.server.api_token = Some(token).filter(|t| !t.is_empty());
    }
    if let Ok(secret) = std::env::var("RINGCAST_CLUSTER_SECRET") {
        config.cluster.secret = Some(secret).filter(|s| !s.is_empty());
    }
    if let Err(e) = config.validate() {
        return fail(&e.to_string());
    }
    if cli.check_config {
        let mut shown = config.clone();
        if shown.server.admin_token.is_some() {
            shown.server.admin_token = Some("<redacted>".into());
        }
        if shown.server.api_token.is_some() {
            shown.server.api_token = Some("<redacted>".into());
        }
        if shown.cluster.secret.is_some() {
            shown.cluster.secret = Some("<redacted>".into());
        }
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{shown:#?}");
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => return fail(&format!("invalid `log.level` {:?}: {e}", config.log.level)),
    };
    use std::io::IsTerminal;
    // Shards log through a buffer drained by a writer thread, so a slow or
    // blocked stderr never stalls a shard; lines past the buffer are dropped
    // (the writer reports how many). The guard flushes at exit.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match config.log.format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match ringcast::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// glibc serves an allocation above 128 KiB by mmap, but raises that
/// threshold up to 32 MiB once such a block is freed: from then on a secret
/// hash's 19 MiB working memory comes from (and stays in) a malloc arena
/// per thread. A fixed threshold keeps every large block an mmap that is
/// unmapped when freed, so bursts (hashing floods, 16 MiB RPC frames) give
/// their memory back (tests/webrocket.rs measures RSS after 5,000 guesses).
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it is called before
    // any other thread exists, and a refused value (0 returned) leaves the
    // defaults in force.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ringcast: {message}");
    ExitCode::FAILURE
}
