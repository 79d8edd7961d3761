//! ringcast-bench: measurements for ringcast. Figures are reported as ratios
//! against a baseline measured in the same run (this machine is noisy).

mod connect;
mod fanout;
mod hold;
mod json;
mod plot;
mod protocol;
mod publisher;
mod report;
mod roundtrip;
mod sendpath;
mod server_stats;
mod soak;
mod stub_backend;
mod tls;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringcast-bench", version, about)]
struct Cli {
    /// Connect every WebSocket client over TLS (wss://), trusting this CA
    /// or self-signed certificate (PEM); the server name is `localhost`.
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Parse client commands with simd-json and serde_json; prints ns/command and the ratio.
    Json(json::Args),
    /// Ramp N connections at a target rate: connect + upgrade latency, failures, time to all connected.
    Connect(connect::Args),
    /// N subscribers over T topics, a publisher at rate R: latency, deliveries/s, losses.
    Fanout(fanout::Args),
    /// Open N subscribed idle connections and report the server's memory per connection.
    Hold(hold::Args),
    /// ws2api round trips through a proxy vhost: messages/s and latency histogram.
    Roundtrip(roundtrip::Args),
    /// A fast ws2api backend (HTTP) for `roundtrip`: allows, echoes, accepts closes.
    StubBackend(stub_backend::Args),
    /// Kernel cost of one delivery by send path: sendmsg per socket vs io_uring batches.
    Sendpath(sendpath::Args),
    /// Minutes of churn, publications, slow and TLS clients; fails if the servers' RSS grows or descriptors leak.
    Soak(soak::Args),
}

fn main() {
    let cli = Cli::parse();
    if let Some(ca) = &cli.tls_ca {
        if let Err(e) = tls::init(ca) {
            eprintln!("ringcast-bench: {e}");
            std::process::exit(2);
        }
    }
    let result = match cli.scenario {
        Scenario::Json(a) => json::run(a),
        Scenario::Connect(a) => connect::run(a),
        Scenario::Fanout(a) => fanout::run(a),
        Scenario::Hold(a) => hold::run(a),
        Scenario::Roundtrip(a) => roundtrip::run(a),
        Scenario::StubBackend(a) => stub_backend::run(a),
        Scenario::Sendpath(a) => sendpath::run(a),
        Scenario::Soak(a) => soak::run(a),
    };
    if let Err(e) = result {
        eprintln!("ringcast-bench: {e}");
        std::process::exit(1);
    }
}
