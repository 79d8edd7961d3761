//! Starts everything: listeners, shards pinned to cores, the integration
//! thread (RPC and HTTP API on tokio), and the shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::api::{self, ApiContext};
use crate::broker::cluster::{Cluster, ClusterMetrics};
use crate::broker::MemoryBroker;
use crate::bus::ShardRouter;
use crate::bus::{Broker, Peers};
use crate::clients::ClientRegistry;
use crate::config::Config;
use crate::hooks::{self, HookMetrics, HookReceiver};
use crate::metrics::{GlobalMetrics, ShardMetrics};
use crate::rpc::server::{self as rpc_server, RpcContext};
use crate::rt;
use crate::shard::{self, ShardSetup};
use crate::webrocket::WebRocket;

/// Why the server could not start or run.
/// Why the server could not start, with what to do about it.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be opened.
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    /// A thread or runtime the server needs could not start.
    Thread { what: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// A shard thread started but could not run (`why`).
    Shard { why: String },
    /// The network broker could not be set up.
    Broker(crate::broker::transport::TransportError),
    /// The WebRocket store could not be opened or written.
    Store(crate::webrocket::store::StoreError),
    /// A TLS certificate or key (`[server.tls]`, `[server.api_tls]`) is unusable.
    Tls { what: &'static str, source: crate::tls::TlsError },
    /// A `[vhost.auth]` key is missing or unusable.
    Auth { vhost: String, source: crate::auth::token::AuthSetupError },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Listen { what, addr, source } => write!(f, "cannot listen for {what} on {addr}: {source}"),
            StartError::Thread { what, source } => write!(f, "cannot start {what}: {source}"),
            StartError::Shard { why } => write!(
                f,
                "a shard could not start: {why}\nringcast needs io_uring (Linux 5.13+; Docker's default seccomp profile blocks it) \
                 and RLIMIT_MEMLOCK above server.io_memory_kib per shard (`ulimit -l`); see docs/tuning.md"
            ),
            StartError::Broker(e) => write!(f, "{e}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Tls { what, source } => write!(f, "{what}: {source}"),
            StartError::Auth { vhost, source } => write!(f, "[vhost.auth] of {vhost}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Each vhost's token check (`[vhost.auth]`), by vhost index; key files are read now.
fn verifiers(config: &Config) -> Result<Arc<[Option<crate::auth::Verifier>]>, StartError> {
    use crate::auth::GrantsClaim;
    use crate::dialect::Dialect;
    config
        .vhosts
        .iter()
        .map(|v| {
            let Some(a) = &v.auth else { return Ok(None) };
            let claim = match v.dialect {
                Dialect::RoadRunner => GrantsClaim::Topics,
                Dialect::WebRocket => GrantsClaim::Channels,
                Dialect::Proxy | Dialect::Echo => GrantsClaim::None,
            };
            crate::auth::Verifier::new(a, claim)
                .map(Some)
                .map_err(|source| StartError::Auth { vhost: v.path.clone(), source })
        })
        .collect()
}

fn bind_error(what: &'static str, addr: SocketAddr, source: std::io::Error) -> StartError {
    StartError::Listen { what, addr, source }
}

fn thread_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |e| StartError::Thread { what, source: Box::new(e) }
}

/// A listening socket with SO_REUSEPORT, so every shard can have its own.
fn reuseport_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Runs until SIGINT or SIGTERM, then drains and returns.
pub fn run(config: Config) -> Result<(), StartError> {
    let config = Arc::new(config);
    let shards = config.shard_count();
    let server = &config.server;
    let load_certs = |what: &'static str, files: &Option<crate::config::TlsFiles>| {
        files
            .as_ref()
            .map(|f| crate::tls::CertStore::load(f.cert.clone(), f.key.clone()))
            .transpose()
            .map_err(|source| StartError::Tls { what, source })
    };
    let ws_tls = load_certs("server.tls", &server.tls)?;
    let api_tls = load_certs("server.api_tls", &server.api_tls)?;
    let auth = verifiers(&config)?;
    let per_ip = crate::limits::PerIp::new(
        config.limits.max_connections_per_ip,
        config.limits.handshakes_per_ip_per_s,
    );
    let backends = hooks::Backends::new(&config)
        .map_err(|source| StartError::Tls { what: "[vhost.hooks] ca_file", source })?;

    // Shard 0's socket picks the port (it may be 0); the others join it.
    let first = reuseport_listener(server.listen, server.backlog)
        .map_err(|e| bind_error("websocket", server.listen, e))?;
    let ws_addr = first.local_addr().map_err(|e| bind_error("websocket", server.listen, e))?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(
            reuseport_listener(ws_addr, server.backlog).map_err(|e| bind_error("websocket", ws_addr, e))?,
        );
    }
    let api_listener = std::net::TcpListener::bind(server.api_listen)
        .map_err(|e| bind_error("the HTTP API", server.api_listen, e))?;
    let rpc_listener = std::net::TcpListener::bind(server.rpc_listen)
        .map_err(|e| bind_error("goridge RPC", server.rpc_listen, e))?;
    let api_addr = api_listener.local_addr().map_err(|e| bind_error("the HTTP API", server.api_listen, e))?;
    let rpc_addr = rpc_listener.local_addr().map_err(|e| bind_error("goridge RPC", server.rpc_listen, e))?;

    let global_metrics = Arc::new(GlobalMetrics::default());
    let (router, inboxes) =
        ShardRouter::new(shards, server.shard_inbox, server.shard_inbox_bytes, global_metrics.clone());
    let shard_metrics: Vec<Arc<ShardMetrics>> = (0..shards).map(|_| Arc::default()).collect();
    let shard_stats: Vec<Arc<crate::stats::ShardStats>> =
        (0..shards).map(|_| Arc::new(crate::stats::ShardStats::new(config.vhosts.len()))).collect();
    let open_connections = Arc::new(AtomicUsize::new(0));
    let clients = Arc::new(ClientRegistry::default());
    let (registry_handle, registry_ops) = crate::clients::handle();
    let hook_metrics = Arc::new(HookMetrics::default());
    let (hook_sender, hook_receiver) =
        hooks::channel(shards * config.limits.max_hooks_in_flight, hook_metrics.clone());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // The integration thread's runtime, built here: shards hand it work
    // (secret hash checks) through its handle.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(thread_error("the tokio runtime"))?;
    let webrocket = open_webrocket(&config, runtime.handle().clone())?;
    let webrocket_store = webrocket.directory.store.clone();
    // A network broker learns from the shards which topics they hold.
    let (interest_tx, interest_rx) = match config.broker.as_str() {
        "memory" => (None, None),
        _ => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
    };
    let cluster_metrics = Arc::new(ClusterMetrics::default());
    let peers_slot: Arc<std::sync::OnceLock<Arc<dyn Peers>>> = Arc::default();

    let mut executors = Vec::with_capacity(shards);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    for (id, (inbox, listener)) in inboxes.into_iter().zip(listeners).enumerate() {
        let setup = ShardSetup {
            id,
            config: config.clone(),
            metrics: shard_metrics[id].clone(),
            open_connections: open_connections.clone(),
            inbox,
            listener,
            router: router.clone(),
            hooks: hook_sender.clone(),
            clients: registry_handle.clone(),
            webrocket: webrocket.clone(),
            peers: peers_slot.clone(),
            interest: interest_tx.clone(),
            stats: shard_stats[id].clone(),
            tls: ws_tls.clone(),
            auth: auth.clone(),
            per_ip: per_ip.clone(),
        };
        let cpu = (!cores.is_empty()).then(|| cores[id % cores.len()].id);
        let ready = ready_tx.clone();
        let ex =
            rt::spawn_executor(&format!("shard{id}"), cpu, server.io_memory_kib * 1024, move || async move {
                // A panic before `ready` fails the start with this message.
                let ring = shard::ring().unwrap_or_else(|e| panic!("cannot create its io_uring: {e}"));
                let _ = ready.send(id);
                shard::run(setup, ring).await;
            })
            .map_err(|e| StartError::Thread { what: format!("shard {id}"), source: Box::new(e) })?;
        executors.push(ex);
    }
    drop(ready_tx);
    for _ in 0..shards {
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            // A shard thread ended before running: its join error says why.
            let why = executors
                .into_iter()
                .filter_map(|ex| ex.join().err())
                .map(|e| e.to_string())
                .next()
                .unwrap_or_else(|| "timed out".into());
            return Err(StartError::Shard { why });
        }
    }

    drop(interest_tx);
    let (broker, peers): (Arc<dyn Broker>, Option<Arc<dyn Peers>>) = match interest_rx {
        None => (Arc::new(MemoryBroker::new(router.clone())), None),
        Some(interest) => {
            let cluster = runtime.block_on(start_cluster(
                &config,
                interest,
                router.clone(),
                clients.clone(),
                cluster_metrics.clone(),
                webrocket.clone(),
            ))?;
            (cluster.clone(), Some(cluster))
        }
    };
    if let Some(peers) = &peers {
        let _ = peers_slot.set(peers.clone());
    }
    let rpc_ctx = Arc::new(RpcContext {
        broker: broker.clone(),
        broker_name: config.broker.clone(),
        max_frame_size: config.rpc.max_frame_size,
        frame_timeout: Duration::from_millis(config.rpc.frame_timeout_ms),
        publish_limits: config.publish_limits(),
        metrics: global_metrics.clone(),
        write_timeout: Duration::from_millis(config.rpc.write_timeout_ms),
        max_connections: config.rpc.max_connections,
    });
    let network = config.broker != "memory";
    let telemetry = crate::snapshot::Telemetry {
        shard_metrics,
        shard_stats,
        started: std::time::Instant::now(),
        bound: [ws_addr, api_addr, rpc_addr],
        metrics: global_metrics,
        hook_metrics: hook_metrics.clone(),
        broker_round_trip: network.then(|| cluster_metrics.round_trip.clone()),
        node: webrocket.node.clone(),
        broker_name: broker.name(),
        broker_degraded: Box::new({
            let broker = broker.clone();
            move || broker.degraded()
        }),
        config: config.clone(),
    };
    let api_ctx = Arc::new(ApiContext {
        broker,
        peers,
        telemetry,
        max_body: config.rpc.max_frame_size,
        request_timeout: Duration::from_millis(config.server.api_request_timeout_ms),
        publish_limits: config.publish_limits(),
        router: router.clone(),
        clients,
        cluster_metrics: network.then_some(cluster_metrics),
        webrocket,
        admin_token: config.server.admin_token.clone(),
    });
    drop(hook_sender);
    std::thread::Builder::new()
        .name("integration".into())
        .spawn({
            let hook_metrics = hook_metrics.clone();
            let api_tls = api_tls.clone();
            move || {
                integration_thread(
                    runtime,
                    (api_listener, api_tls),
                    rpc_listener,
                    api_ctx,
                    rpc_ctx,
                    (hook_receiver, hook_metrics, backends),
                    registry_ops,
                )
            }
        })
        .map_err(thread_error("the integration thread"))?;

    let vhosts: Vec<String> = config.vhosts.iter().map(|v| format!("{}({})", v.path, v.dialect)).collect();
    info!(
        "ringcast listening: websocket={ws_addr} api={api_addr} rpc={rpc_addr} shards={shards} broker={} vhosts={} tls={}",
        config.broker,
        vhosts.join(","),
        match (&ws_tls, &api_tls) {
            (None, None) => "off",
            (Some(_), None) => "websocket",
            (None, Some(_)) => "api",
            (Some(_), Some(_)) => "websocket,api",
        }
    );

    let certs: Vec<_> = [&ws_tls, &api_tls].into_iter().flatten().cloned().collect();
    wait_for_signal(&certs)?;
    info!(timeout_ms = config.server.shutdown_timeout_ms, "shutting down: closing connections with 1001");
    // One deadline for the whole shutdown: shards drain within it, and the
    // close notifications they queued go out within what is left of it.
    let deadline = std::time::Instant::now() + Duration::from_millis(config.server.shutdown_timeout_ms);
    router.shutdown();
    for (id, ex) in executors.into_iter().enumerate() {
        if let Err(e) = ex.join() {
            error!(shard = id, error = %e, "shard ended with an error");
        }
    }
    // Writes queued behind the admin API's (channels created by a
    // subscribe) reach the disk before the exit: the writer runs them in
    // order, so an empty commit resolves after them.
    if let Err(e) = futures_lite::future::block_on(webrocket_store.apply(Vec::new())) {
        tracing::debug!(error = %e, "no state store to flush");
    }
    while hook_metrics.pending() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if hook_metrics.pending() > 0 {
        error!(pending = hook_metrics.pending(), "exiting with backend hook requests unfinished");
    }
    info!("stopped");
    Ok(())
}

fn integration_thread(
    runtime: tokio::runtime::Runtime,
    (api_listener, api_tls): (std::net::TcpListener, Option<Arc<crate::tls::CertStore>>),
    rpc_listener: std::net::TcpListener,
    api_ctx: Arc<ApiContext>,
    rpc_ctx: Arc<RpcContext>,
    (hook_receiver, hook_metrics, backends): (HookReceiver, Arc<HookMetrics>, hooks::Backends),
    registry_ops: crate::clients::RegistryOps,
) {
    runtime.block_on(async move {
        api_ctx.router.spawn_space_relays();
        let peers = api_ctx.peers.clone();
        tokio::spawn(crate::clients::run(registry_ops, api_ctx.clients.clone(), move |client, here| {
            if let Some(peers) = &peers {
                peers.client_here(client, here)
            }
        }));
        let to_tokio = |l: std::net::TcpListener| {
            l.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(l))
        };
        let (api, rpc) = match (to_tokio(api_listener), to_tokio(rpc_listener)) {
            (Ok(a), Ok(r)) => (a, r),
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot register listeners with tokio; exiting");
                std::process::exit(1);
            }
        };
        tokio::join!(
            api::serve(api, api_ctx, api_tls),
            rpc_server::serve(rpc, rpc_ctx),
            hooks::run(hook_receiver, hook_metrics, backends)
        );
    });
}

/// Connects (in the background) to the network broker and starts this
/// node's side of the cluster; the node serves even while the broker is down.
async fn start_cluster(
    config: &Config,
    interest: crate::bus::InterestReceiver,
    router: ShardRouter,
    clients: Arc<ClientRegistry>,
    metrics: Arc<ClusterMetrics>,
    webrocket: Arc<WebRocket>,
) -> Result<Arc<Cluster>, StartError> {
    use crate::broker::transport::Transport;
    let (incoming_tx, incoming_rx) = tokio::sync::mpsc::channel(64 * 1024);
    let reconnects = metrics.reconnects.clone();
    let transport: Arc<dyn Transport> = match config.broker.as_str() {
        "redis" => crate::broker::redis::RedisTransport::start(
            &config.redis.url,
            &config.redis.prefix,
            incoming_tx,
            reconnects,
        )
        .map_err(StartError::Broker)?,
        _ => crate::broker::nats::NatsTransport::start(
            &config.nats.url,
            &config.nats.prefix,
            incoming_tx,
            reconnects,
        )
        .await
        .map_err(StartError::Broker)?,
    };
    let trust = crate::broker::cluster::Trust {
        sealer: crate::broker::seal::Sealer::new(config.cluster.secret.as_deref().map(str::as_bytes)),
        window_ms: config.cluster.replay_window_ms,
        configured_vhosts: config.vhosts.iter().map(|v| v.path.clone()).collect(),
    };
    if !trust.sealer.is_secure() {
        warn!(
            "cluster.insecure = true: envelopes on the {} broker are not authenticated; anyone who can publish \
             to it can inject publications and WebRocket changes (set cluster.secret)",
            config.broker
        );
    }
    Ok(Cluster::start((transport, incoming_rx), interest, router, clients, metrics, webrocket, trust))
}

/// Opens the state store when anything can use it (a webrocket vhost in the
/// config, the admin API, or state kept from an earlier run), and builds the
/// directory of WebRocket vhosts from it.
fn open_webrocket(config: &Config, runtime: tokio::runtime::Handle) -> Result<Arc<WebRocket>, StartError> {
    use crate::dialect::Dialect;
    use crate::webrocket::directory::{ConfigVhost, Directory};
    use crate::webrocket::store::{self, Loaded, Store};
    let configured: Vec<ConfigVhost<'_>> = config
        .vhosts
        .iter()
        .filter(|v| v.dialect == Dialect::WebRocket)
        .map(|v| ConfigVhost { path: &v.path, anonymous: v.anonymous })
        .collect();
    let dir = &config.server.data_dir;
    let needed =
        !configured.is_empty() || config.server.admin_token.is_some() || dir.join(store::FILE_NAME).exists();
    let (store, loaded) = if needed {
        Store::open(dir).map_err(StartError::Store)?
    } else {
        (Store::disabled(), Loaded::default())
    };
    let (directory, initial) = Directory::load(store.clone(), loaded, &configured);
    directory
        .max_channels
        .store(config.webrocket.max_channels_per_vhost, std::sync::atomic::Ordering::Relaxed);
    if !initial.is_empty() {
        futures_lite::future::block_on(store.apply(initial)).map_err(StartError::Store)?;
    }
    if needed {
        info!(file = %store.file().display(), vhosts = directory.vhosts().len(), "state store open");
    }
    Ok(WebRocket::new(directory, runtime))
}

/// Blocks until SIGINT or SIGTERM; SIGHUP meanwhile reloads the TLS
/// certificates for new handshakes. A second SIGINT/SIGTERM exits at once.
fn wait_for_signal(certs: &[Arc<crate::tls::CertStore>]) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| StartError::Thread { what: "signal handlers".into(), source: Box::new(e) })?;
    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        if certs.is_empty() {
            info!("SIGHUP: no TLS certificate to reload");
        }
        for store in certs {
            match store.reload() {
                Ok(()) => {
                    info!(cert = %store.cert_file().display(), "SIGHUP: TLS certificate reloaded for new connections")
                }
                Err(e) => {
                    error!(cert = %store.cert_file().display(), error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate")
                }
            }
        }
    }
    std::thread::spawn(move || {
        if signals.forever().any(|signal| signal != SIGHUP) {
            eprintln!("second signal: exiting without waiting for connections to close");
            std::process::exit(130);
        }
    });
    Ok(())
}
