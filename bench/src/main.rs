//! ringcast-bench: measurements for ringcast. Figures are reported as ratios
//! against a baseline measured in the same run (this machine is noisy).

mod hold;
mod json;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringcast-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Parse client commands with simd-json and serde_json; prints ns/command and the ratio.
    Json(json::Args),
    /// Open N subscribed idle connections and report the server's memory per connection.
    Hold(hold::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Json(a) => json::run(a),
        Scenario::Hold(a) => hold::run(a),
    };
    if let Err(e) = result {
        eprintln!("ringcast-bench: {e}");
        std::process::exit(1);
    }
}
