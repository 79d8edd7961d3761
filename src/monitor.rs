//! `ringcast ctl monitor`: the dashboard's view in a terminal, refreshed
//! each second from `GET /stats` (plain ANSI, no terminal library needed).

use std::fmt::Write;

use crate::metrics::Percentiles;
use crate::snapshot::Snapshot;

/// Numbers as people read them: 12.3k, 4.56M.
pub fn human(n: f64) -> String {
    let a = n.abs();
    if a >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

fn latency(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} samples)",
        p.p50, p.p99, p.p999, p.max, p.count
    )
}

/// One screen of text for `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let t = &s.totals;
    let health = match &s.health.broker_error {
        None => s.health.status.clone(),
        Some(e) => format!("{} ({e})", s.health.status),
    };
    let _ = writeln!(
        out,
        "ringcast {}  node {}  up {:.0} s  broker {}  health {health}",
        s.version, s.node, s.uptime_seconds, s.health.broker
    );
    let rates = match &s.rates {
        Some(r) => format!(
            "in {}/s  out {}/s  published {}/s",
            human(r.messages_in),
            human(r.messages_out),
            human(r.published)
        ),
        None => "rates —".into(),
    };
    let _ = writeln!(
        out,
        "connections {}  subscriptions {}  topics {}  {rates}",
        human(t.connections as f64),
        human(t.subscriptions as f64),
        human(t.topics as f64)
    );
    let _ = writeln!(
        out,
        "slow-consumer closes {}  refused upgrades {}  hooks pending {}  hook failures {}",
        t.slow_consumer_closes, t.refused, s.health.hooks_pending, s.health.hook_failures
    );
    let _ =
        writeln!(out, "\npublish → socket   {}  (last second)", latency(&s.publish_to_socket_last_second_ms));
    let _ = writeln!(out, "publish → socket   {}  (since start)", latency(&s.publish_to_socket_ms));
    for (hook, p) in &s.hook_ms {
        let _ = writeln!(out, "hook {hook:<13} {}", latency(p));
    }
    if let Some(p) = &s.broker_round_trip_ms {
        let _ = writeln!(out, "broker round trip  {}", latency(p));
    }
    let _ = writeln!(
        out,
        "send queue depth   p99 {} B  max {} B",
        human(s.queue_depth_bytes.p99),
        human(s.queue_depth_bytes.max)
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:>12} {:>14} {:>8} {:>14} {:>12}",
        "SHARD", "CONNECTIONS", "SUBSCRIPTIONS", "TOPICS", "MESSAGES OUT", "SLOW CLOSES"
    );
    for sh in &s.shards {
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>14} {:>8} {:>14} {:>12}",
            sh.shard, sh.connections, sh.subscriptions, sh.topics, sh.messages_out, sh.slow_consumer_closes
        );
    }
    let _ = writeln!(out, "\n{:<32} {:<11} {:>12}", "VHOST", "DIALECT", "CONNECTIONS");
    for v in &s.vhosts {
        let _ = writeln!(out, "{:<32} {:<11} {:>12}", v.path, v.dialect, v.connections);
    }
    let _ = writeln!(out, "\n{:<40} {:>12} {:>12}", "TOPIC (by subscribers)", "SUBSCRIBERS", "MSG/S");
    for tp in &s.top_topics_by_subscribers {
        let _ =
            writeln!(out, "{:<40} {:>12} {:>12}", tp.topic, tp.subscribers, human(tp.messages_per_second));
    }
    let _ = writeln!(out, "\n{:<40} {:>12} {:>12}", "TOPIC (by message rate)", "MSG/S", "SUBSCRIBERS");
    for tp in &s.top_topics_by_rate {
        let _ =
            writeln!(out, "{:<40} {:>12} {:>12}", tp.topic, human(tp.messages_per_second), tp.subscribers);
    }
    let refused: Vec<String> =
        s.refused.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    if !refused.is_empty() {
        let _ = writeln!(out, "\nrefused: {}", refused.join("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_560_000.0), "4.56M");
        assert_eq!(human(2.5), "2.5");
    }
}
