//! The node daemon's runtime: the threads and tasks that perform what the
//! pure parts (`cluster`, `fsm`) decide.
//!
//! Start-up follows linkerd2-proxy's order: tracing, configuration (a bad
//! one exits 64 before anything runs), build (secret, epoch, sockets),
//! spawn (heartbeat thread, API), then wait for SIGTERM/SIGINT, then drain.

pub mod epoch;
pub mod farm;
pub mod heartbeat;
pub mod mirror;
mod module;
pub mod module_log;
pub mod notify;
pub mod reload;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    api::{self, status::NetworkStatus, ModuleStatus, NodeStatus, PeerStatus, SharedStatus},
    cluster::{detector::Liveness, keys::ClusterSecret},
    config::{self, Config, Module},
};
use farm::{FarmDriver, FarmInput, ModuleInput};
use heartbeat::{ClusterEvent, Heartbeat, HeartbeatNetwork, HeartbeatSetup};

/// How long shutdown waits for the API and modules to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// `halo run`: runs the daemon until SIGTERM or SIGINT; SIGHUP reloads.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    init_tracing();
    let text = read_config(config_path)?;
    let config = config::parse(&text, config_path)?;
    info!(node = %config.node.name, cluster = %config.cluster.name, config = %config_path.display(), "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("halo-worker")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(
        config,
        Started {
            path: config_path.to_owned(),
            text,
        },
    ))
}

fn read_config(path: &Path) -> Result<String, config::ConfigError> {
    std::fs::read_to_string(path).map_err(|source| config::ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The configuration file the daemon started from, for reloads.
struct Started {
    path: std::path::PathBuf,
    text: String,
}

/// `halo witness`: serves leases until SIGTERM or SIGINT; SIGHUP re-reads
/// the secret files.
pub fn run_witness(
    listen: SocketAddr,
    secret_file: &Path,
    accept_secret_file: Option<&Path>,
    max_lease: Duration,
) -> anyhow::Result<()> {
    init_tracing();
    // A missing accepted secret accepts nothing more: the witness can run
    // with `--accept-secret` named at all times, and a rotation only
    // writes or removes that file and sends SIGHUP.
    let load =
        || ClusterSecret::load_pair(secret_file, accept_secret_file.filter(|path| path.exists()));
    let secret = load()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let policy = crate::witness::lease::LeasePolicy {
            max_duration: max_lease,
            ..Default::default()
        };
        let arbiter =
            crate::witness::arbiter::Arbiter::bind(listen, secret.witness_key(), policy).await?;
        info!(listen = %arbiter.local_addr()?, accept_secret = secret.has_accepted(), "witness ready");
        notify::notify("READY=1");
        let key = arbiter.key();
        let stats = arbiter.stats();
        let serving = arbiter.run();
        tokio::pin!(serving);
        loop {
            tokio::select! {
                result = &mut serving => return result,
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); return Ok(()); }
                _ = sighup.recv() => {
                    // Keeps serving under the old secrets when the new ones
                    // cannot be read: a restart would refuse every lease for
                    // its quiet period.
                    match load() {
                        Ok(secret) => {
                            *key.lock().expect("key lock") = secret.witness_key();
                            info!(
                                accept_secret = secret.has_accepted(),
                                accepted_secret_requests = stats.accepted_secret.load(std::sync::atomic::Ordering::Relaxed),
                                "SIGHUP: secrets reloaded"
                            );
                        }
                        Err(error) => warn!(error = %format!("{error:#}"), "SIGHUP: secrets not reloaded, the old ones stay in use"),
                    }
                }
            }
        }
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Everything the daemon runs, built from the configuration.
async fn serve(config: Config, started: Started) -> anyhow::Result<()> {
    let state_dir = &config.node.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let secret = ClusterSecret::load_pair(
        &config.cluster.secret_file,
        config.cluster.accept_secret_file.as_deref(),
    )?;
    if secret.has_accepted() {
        info!("two cluster secrets: signing with secret_file, also accepting accept_secret_file");
    }
    let epoch = epoch::next_boot_epoch(state_dir)?;
    let mut peer_epochs = epoch::load_peer_epochs(state_dir)?;
    let setup = heartbeat_setup(&config, epoch, &secret, peer_epochs.clone())?;

    let status: SharedStatus = Arc::new(RwLock::new(initial_status(&config, epoch)));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let heartbeat = Heartbeat::start(setup, events_tx)?;

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding the API on {}", config.api.listen))?;
    let token = api::ApiToken::load(&config.api.token_file)?;
    if !token.is_set() {
        warn!(
            token_file = %config.api.token_file.display(),
            "no API token file: write actions (start, stop, …) are refused until it exists"
        );
    }
    let (modules_down_tx, modules_down) = tokio::sync::watch::channel(false);
    let mut module_inputs: Vec<(String, ModuleSender)> = Vec::new();
    let mut module_actions = HashMap::new();
    let tables: crate::farm::SharedTables = Arc::default();
    let mut module_tasks = Vec::new();
    // The mirror drivers' view of the secrets, which a reload replaces.
    let (mirror_secrets, secrets) = tokio::sync::watch::channel(secret.clone());
    // One write capture for every mirror module; without it replication
    // still works (inotify and checksums) but cannot hold durable writes.
    let capture_hub = if config
        .modules
        .iter()
        .any(|m| matches!(m, Module::Mirror(_)))
    {
        let dirs: Vec<std::path::PathBuf> = config
            .modules
            .iter()
            .filter_map(|m| match m {
                Module::Mirror(mirror) => Some(mirror.dirs.iter().map(|d| d.path.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        match crate::mirror::hub::CaptureHub::start(&config.node.name, &dirs) {
            Ok(hub) => Some(hub),
            Err(error) => {
                let error = format!("{error:#}");
                warn!(%error, "the write capture did not load: mirror modules replicate through inotify and checksums only, and sync = \"fsync\" cannot hold durable writes");
                let mut status = status.write().expect("status lock");
                for module in status.modules.iter_mut().filter(|m| m.kind == "mirror") {
                    module.capture_error = Some(error.clone());
                }
                None
            }
        }
    } else {
        None
    };
    for module in &config.modules {
        match module {
            Module::Farm(farm) => {
                if farm.rules.is_empty() {
                    warn!(module = %farm.name, "farm has no [[module.rule]]: traffic to its VIPs is dropped, only pings are answered");
                }
                let log = module_log::ModuleLog::open(state_dir, &farm.name)?;
                let (sink, lines) = crate::app::LogSink::new();
                let driver = FarmDriver::new(
                    farm.clone(),
                    &config.node.name,
                    Arc::clone(&status),
                    &heartbeat,
                    log,
                    sink,
                    Arc::clone(&tables),
                );
                let (tx, rx) = mpsc::unbounded_channel();
                let (actions_tx, actions_rx) = mpsc::unbounded_channel();
                module_inputs.push((farm.name.clone(), ModuleSender::Farm(tx)));
                module_actions.insert(farm.name.clone(), actions_tx);
                module_tasks.push(tokio::spawn(driver.run(
                    rx,
                    actions_rx,
                    lines,
                    modules_down.clone(),
                )));
            }
            Module::Mirror(mirror) => {
                let log = module_log::ModuleLog::open(state_dir, &mirror.name)?;
                let (sink, lines) = crate::app::LogSink::new();
                let (driver, internal) = mirror::MirrorDriver::new(
                    mirror.clone(),
                    &config,
                    secrets.clone(),
                    epoch,
                    Arc::clone(&status),
                    Arc::clone(&heartbeat.reports),
                    Arc::clone(&heartbeat.pauses),
                    log,
                    sink,
                    capture_hub.clone(),
                )?;
                let (tx, rx) = mpsc::unbounded_channel();
                let (actions_tx, actions_rx) = mpsc::unbounded_channel();
                module_inputs.push((mirror.name.clone(), ModuleSender::Mirror(tx)));
                module_actions.insert(mirror.name.clone(), actions_tx);
                module_tasks.push(tokio::spawn(driver.run(
                    internal,
                    rx,
                    actions_rx,
                    lines,
                    modules_down.clone(),
                )));
            }
        }
    }
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let (reload_tx, mut reload_requests) = mpsc::unbounded_channel();
    let app = api::router(api::ApiContext {
        status: Arc::clone(&status),
        actions: Arc::new(module_actions),
        token,
        tables,
        config: Arc::new(config.clone()),
        reload: Some(reload_tx),
        pauses: Some(Arc::clone(&heartbeat.pauses)),
    });
    let api_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    info!(api = %config.api.listen, epoch, "ready");
    notify::notify("READY=1");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut counters = tokio::time::interval(Duration::from_secs(1));
    let mut running = config.clone();
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let _ = reload(&mut running, &started, &heartbeat, &mirror_secrets, &module_inputs);
            }
            Some(answer) = reload_requests.recv() => {
                info!("reload requested through the API");
                let _ = answer.send(reload(&mut running, &started, &heartbeat, &mirror_secrets, &module_inputs));
            }
            Some(event) = events.recv() => {
                if let ClusterEvent::NewEpoch { peer, epoch } = &event {
                    peer_epochs.insert(peer.clone(), *epoch);
                    if let Err(error) = epoch::store_peer_epochs(&config.node.state_dir, &peer_epochs) {
                        warn!(error = %format!("{error:#}"), "cannot persist peer epochs");
                    }
                }
                apply_cluster_event(&status, &config, &event);
                route_to_modules(&module_inputs, &event);
            }
            _ = counters.tick() => publish_counters(&status, &heartbeat),
        }
    }

    notify::notify("STOPPING=1");
    let _ = modules_down_tx.send(true);
    for task in module_tasks {
        if let Err(error) = task.await {
            warn!(%error, "a module task failed");
        }
    }
    let _ = shutdown_tx.send(true);
    drop(heartbeat);
    match tokio::time::timeout(DRAIN_GRACE, api_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!(%error, "the API ended with an error"),
        Ok(Err(error)) => warn!(%error, "the API task failed"),
        Err(_) => warn!("the API did not stop within the grace period"),
    }
    info!("stopped");
    Ok(())
}

/// Re-reads the configuration file and the secrets it names, applies what
/// changes live and says what it applied and refused; on `Err` (an invalid
/// file, an unreadable secret) nothing changed. Logs either way.
fn reload(
    running: &mut Config,
    started: &Started,
    heartbeat: &Heartbeat,
    mirror_secrets: &tokio::sync::watch::Sender<ClusterSecret>,
    modules: &[(String, ModuleSender)],
) -> Result<api::ReloadReport, String> {
    let file = started.path.display().to_string();
    let planned = read_config(&started.path)
        .and_then(|text| reload::plan(running, &started.text, &text, &started.path))
        .map_err(|error| match &error {
            config::ConfigError::Invalid { .. } => {
                format!("invalid configuration, nothing reloaded:\n{error}")
            }
            config::ConfigError::Read { .. } => {
                format!("{:#}, nothing reloaded", anyhow::Error::from(error))
            }
        });
    let plan = planned.and_then(|plan| {
        let secret = ClusterSecret::load_pair(
            &plan.config.cluster.secret_file,
            plan.config.cluster.accept_secret_file.as_deref(),
        )
        .map_err(|error| format!("{:#}, nothing reloaded", anyhow::Error::from(error)))?;
        Ok((plan, secret))
    });
    let (plan, secret) = match plan {
        Ok(ready) => ready,
        Err(why) => {
            warn!(file = %file, error = %why, "reload refused");
            return Err(why);
        }
    };
    heartbeat.set_key(secret.heartbeat_key());
    // Each mirror driver keys its next sessions and witness requests from
    // these, and ends a session keyed from a secret they no longer accept.
    mirror_secrets.send_replace(secret);
    let refused = plan.refused;
    for (name, power) in reload::power_changes(running, &plan.config) {
        if let Some((_, ModuleSender::Farm(tx))) = modules.iter().find(|(n, _)| *n == name) {
            let _ = tx.send(FarmInput::Power(power));
        }
    }
    *running = plan.config;
    for line in &plan.applied {
        info!(file = %file, applied = %line, "reload");
    }
    for line in &refused {
        warn!(file = %file, refused = %line, "reload");
    }
    Ok(api::ReloadReport {
        file,
        applied: plan.applied,
        refused,
    })
}

/// The heartbeat thread's view of the configuration.
fn heartbeat_setup(
    config: &Config,
    epoch: u64,
    secret: &ClusterSecret,
    epoch_floors: HashMap<String, u64>,
) -> anyhow::Result<HeartbeatSetup> {
    let me = config
        .this_node()
        .with_context(|| format!("node {} is not in [[cluster.node]]", config.node.name))?;
    let networks = config
        .cluster
        .networks
        .iter()
        .map(|network| {
            let local_ip = me.addresses.get(&network.name).with_context(|| {
                format!(
                    "node {} has no address on network {}",
                    me.name, network.name
                )
            })?;
            let peers = config
                .cluster
                .nodes
                .iter()
                .filter(|n| n.name != me.name)
                .filter_map(|n| {
                    let ip = n.addresses.get(&network.name)?;
                    Some((n.name.clone(), SocketAddr::new(*ip, network.port)))
                })
                .collect();
            Ok(HeartbeatNetwork {
                name: network.name.clone(),
                pulse: network.pulse,
                timeout: network.timeout,
                local: SocketAddr::new(*local_ip, network.port),
                peers,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(HeartbeatSetup {
        cluster: config.cluster.name.clone(),
        node: me.name.clone(),
        epoch,
        networks,
        key: secret.heartbeat_key(),
        epoch_floors,
    })
}

fn initial_status(config: &Config, epoch: u64) -> NodeStatus {
    let peers = config
        .cluster
        .nodes
        .iter()
        .filter(|n| n.name != config.node.name)
        .map(|n| PeerStatus {
            name: n.name.clone(),
            up: false,
            networks: config
                .cluster
                .networks
                .iter()
                .map(|net| NetworkStatus {
                    name: net.name.clone(),
                    up: false,
                })
                .collect(),
        })
        .collect();
    let modules = config
        .modules
        .iter()
        .map(|module| {
            let (kind, failover) = match module {
                Module::Farm(_) => ("farm", true),
                Module::Mirror(m) => ("mirror", m.failover),
            };
            ModuleStatus {
                name: module.name().to_owned(),
                kind: kind.to_owned(),
                state: "STOP".to_owned(),
                phase: "ready".to_owned(),
                failover,
                checkers: true,
                ..ModuleStatus::default()
            }
        })
        .collect();
    NodeStatus {
        node: config.node.name.clone(),
        cluster: config.cluster.name.clone(),
        epoch,
        peers,
        modules,
        ..NodeStatus::default()
    }
}

/// Hands peers' module reports, and peer losses, to the module drivers.
/// Where a module driver takes its inputs.
enum ModuleSender {
    Farm(mpsc::UnboundedSender<FarmInput>),
    Mirror(mpsc::UnboundedSender<ModuleInput>),
}

impl ModuleSender {
    /// Sends `peer`'s report of the module (`None`: the peer is down) and,
    /// to a farm, the power the peer announces for it.
    fn peer(
        &self,
        peer: &str,
        report: Option<crate::cluster::frame::ModuleReport>,
        power: Option<u32>,
    ) {
        let peer = peer.to_owned();
        match self {
            ModuleSender::Farm(tx) => {
                let _ = tx.send(FarmInput::Peer {
                    peer,
                    report,
                    power,
                });
            }
            ModuleSender::Mirror(tx) => {
                let _ = tx.send(ModuleInput::Peer { peer, report });
            }
        }
    }
}

fn route_to_modules(modules: &[(String, ModuleSender)], event: &ClusterEvent) {
    match event {
        ClusterEvent::Reports {
            peer,
            modules: reports,
            powers,
        } => {
            for (name, tx) in modules {
                let report = reports.iter().find(|r| &r.name == name).cloned();
                tx.peer(peer, report, powers.get(name).copied());
            }
        }
        ClusterEvent::Liveness(Liveness::PeerDown { peer }) => {
            for (_, tx) in modules {
                tx.peer(peer, None, None);
            }
        }
        _ => {}
    }
}

fn apply_cluster_event(status: &SharedStatus, config: &Config, event: &ClusterEvent) {
    let ClusterEvent::Liveness(liveness) = event else {
        return;
    };
    let mut status = status.write().expect("status lock");
    let network_name = |index: u8| config.cluster.networks[usize::from(index)].name.clone();
    match liveness {
        Liveness::PeerUp { peer } | Liveness::PeerDown { peer } => {
            let up = matches!(liveness, Liveness::PeerUp { .. });
            if let Some(p) = status.peers.iter_mut().find(|p| &p.name == peer) {
                p.up = up;
            }
        }
        Liveness::NetworkUp { peer, network } | Liveness::NetworkDown { peer, network } => {
            let up = matches!(liveness, Liveness::NetworkUp { .. });
            let name = network_name(*network);
            if let Some(p) = status.peers.iter_mut().find(|p| &p.name == peer) {
                if let Some(n) = p.networks.iter_mut().find(|n| n.name == name) {
                    n.up = up;
                }
            }
        }
        Liveness::LateTick { .. } => {}
    }
}

fn publish_counters(status: &SharedStatus, heartbeat: &Heartbeat) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &heartbeat.stats;
    let mut status = status.write().expect("status lock");
    status.heartbeat.sent = stats.sent.load(Relaxed);
    status.heartbeat.received = stats.received.load(Relaxed);
    status.heartbeat.late_ticks = stats.late_ticks.load(Relaxed);
    status.heartbeat.rejected = stats
        .rejected()
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n))
        .collect();
    status.heartbeat.send_errors = stats.send_errors.load(Relaxed);
    status.heartbeat.links = stats
        .links()
        .into_iter()
        .map(|((peer, network), frames)| api::status::LinkCounters {
            peer,
            network,
            accepted: frames.accepted,
            lost: frames.lost,
            accepted_secret: frames.accepted_secret,
        })
        .collect();
}
