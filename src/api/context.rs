//! What every route of the API listener reads: the node's handles, limits
//! and measurements, built once by `server`.

use std::sync::Arc;

use crate::bus::{Broker, Peers, ShardRouter};
use crate::clients::ClientRegistry;
use crate::publish;
use crate::snapshot::Telemetry;

pub struct ApiContext {
    pub broker: Arc<dyn Broker>,
    /// With a network broker: the other nodes.
    pub peers: Option<Arc<dyn Peers>>,
    /// The counters and measurements `/metrics`, `/stats` and the live
    /// stream read (also the global counters and the config).
    pub telemetry: Telemetry,
    pub max_body: usize,
    /// Head and body of a request must arrive within this.
    pub request_timeout: std::time::Duration,
    pub publish_limits: publish::Limits,
    pub router: ShardRouter,
    pub clients: Arc<ClientRegistry>,
    /// With a network broker: its metrics.
    pub cluster_metrics: Option<Arc<crate::broker::cluster::ClusterMetrics>>,
    pub webrocket: Arc<crate::webrocket::WebRocket>,
    /// Enables `/admin/…`; requests must carry it as a bearer token.
    pub admin_token: Option<String>,
}
