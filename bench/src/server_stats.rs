//! ringcast's own view of a step (`fanout --stats-api`): its stall
//! detector's waits from `GET /stats`, to read beside the client-side
//! latency. Cumulative since the server started (that is what `/stats`
//! keeps), so a step's line includes the steps before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};

/// The worst shard's stall wait (ms) at one site.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stall {
    pub p99: f64,
    pub max: f64,
}

/// Per site (`inbox`, `driver`).
pub type Stalls = BTreeMap<String, Stall>;

pub async fn stalls(api: SocketAddr) -> Result<Stalls, String> {
    let fail = |e: &dyn std::fmt::Display| format!("GET http://{api}/stats: {e}");
    let tcp = tokio::net::TcpStream::connect(api).await.map_err(|e| fail(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/stats")
        .header("host", api.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(&e))?;
    let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(fail(&response.status()));
    }
    let body = response.into_body().collect().await.map_err(|e| fail(&e))?.to_bytes();
    let view: serde_json::Value = serde_json::from_slice(&body).map_err(|e| fail(&e))?;
    Ok(worst(&view))
}

/// Per site, the highest p99 and max over the snapshot's shards.
fn worst(view: &serde_json::Value) -> Stalls {
    let mut out = Stalls::new();
    for shard in view["shards"].as_array().into_iter().flatten() {
        for (site, p) in shard["stall_ms"].as_object().into_iter().flatten() {
            let e = out.entry(site.clone()).or_default();
            e.p99 = e.p99.max(p["p99"].as_f64().unwrap_or(0.0));
            e.max = e.max.max(p["max"].as_f64().unwrap_or(0.0));
        }
    }
    out
}

/// One line for the step's table.
pub fn line(s: &Stalls) -> String {
    let sites: Vec<String> =
        s.iter().map(|(site, w)| format!("{site} p99 {:.3} max {:.3}", w.p99, w.max)).collect();
    format!("           server stall ms (since start, worst shard): {}", sites.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worst_shard_per_site() {
        let view = serde_json::json!({ "shards": [
            { "stall_ms": { "inbox": { "p99": 1.5, "max": 9.0 }, "driver": { "p99": 0.2, "max": 3.0 } } },
            { "stall_ms": { "inbox": { "p99": 0.5, "max": 40.0 }, "driver": { "p99": 0.4, "max": 1.0 } } },
        ]});
        let w = super::worst(&view);
        assert_eq!(w["inbox"], super::Stall { p99: 1.5, max: 40.0 });
        assert_eq!(w["driver"], super::Stall { p99: 0.4, max: 3.0 });
        assert!(super::line(&w).contains("inbox p99 1.500 max 40.000"));
        assert!(super::worst(&serde_json::json!({})).is_empty());
    }
}
