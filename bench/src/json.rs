//! Which JSON parser for the roadrunner command hot path? Both parse the same
//! commands into the same borrowed struct; simd-json parses in place, so each
//! iteration first restores the input (a copy serde_json does not need, but
//! which the server does not pay either: it parses the unmasked frame itself).

use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;

#[derive(clap::Args)]
pub struct Args {
    /// Iterations per command and parser.
    #[arg(long, default_value_t = 300_000)]
    iterations: u32,
    /// Rounds; the best round counts (least disturbed by other load).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

/// Commands as browsers send them (RoadRunner's documented samples and larger joins).
fn commands() -> Vec<(&'static str, String)> {
    let topics: Vec<String> = (0..20).map(|i| format!("\"chat.room.{i:04}\"")).collect();
    vec![
        ("join 1 topic", r#"{"command":"join","topics":["news"]}"#.to_string()),
        ("RoadRunner sample", r#"{"command":"join","broker":"memory","topics":["foo","foo2"],"payload":""}"#.to_string()),
        ("join 20 topics", format!(r#"{{"command":"join","broker":"memory","topics":[{}],"payload":""}}"#, topics.join(","))),
        ("escaped + payload", r#"{"command":"leave","topics":["a\"b","caf\u00e9"],"payload":{"user":"joe","token":"abcdefghijklmnopqrstuvwxyz0123456789"}}"#.to_string()),
    ]
}

/// The same shape serde_json can borrow into (Cow for escaped strings).
#[derive(Deserialize)]
struct SerdeCommand<'a> {
    #[serde(borrow, default)]
    command: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    broker: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    topics: Option<Vec<std::borrow::Cow<'a, str>>>,
}

fn best_ns(rounds: u32, iterations: u32, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t.elapsed().as_nanos() as f64 / iterations as f64
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn run(args: Args) -> Result<(), String> {
    println!(
        "{:<20} {:>6} {:>14} {:>14} {:>12}",
        "command", "bytes", "simd-json ns", "serde_json ns", "simd/serde"
    );
    let mut buffers = simd_json::Buffers::default();
    for (name, cmd) in commands() {
        let mut scratch = cmd.as_bytes().to_vec();
        // Both must accept the command.
        ringcast::dialect::roadrunner::parse_command(&mut scratch.clone(), &mut buffers)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<SerdeCommand>(cmd.as_bytes()).map_err(|e| e.to_string())?;
        let simd = best_ns(args.rounds, args.iterations, || {
            scratch.copy_from_slice(cmd.as_bytes());
            let c = ringcast::dialect::roadrunner::parse_command(&mut scratch, &mut buffers);
            black_box(&c);
        });
        let serde = best_ns(args.rounds, args.iterations, || {
            let c: Result<SerdeCommand, _> = serde_json::from_slice(black_box(cmd.as_bytes()));
            black_box(c.map(|c| (c.command.is_some(), c.broker.is_some(), c.topics.map(|t| t.len()))).ok());
        });
        println!("{name:<20} {:>6} {simd:>14.1} {serde:>14.1} {:>12.2}", cmd.len(), simd / serde);
    }
    Ok(())
}
