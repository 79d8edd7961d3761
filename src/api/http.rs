//! The API's HTTP vocabulary: replies, bodies read within their limits,
//! bearer tokens compared in constant time.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::context::ApiContext;

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error(status: StatusCode, message: &str) -> Reply {
    json(status, serde_json::json!({ "error": message }).to_string())
}

pub fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The whole body, within `max_body` bytes and the request timeout (a
/// client dribbling its body must not hold a task forever).
pub async fn read_body(req: Request<Incoming>, ctx: &ApiContext) -> Result<Bytes, Reply> {
    read_body_within(req, ctx, ctx.max_body).await
}

/// `read_body` with a lower bound than `max_body` (pushes: `limits.max_backpressure`).
pub async fn read_body_within(
    req: Request<Incoming>,
    ctx: &ApiContext,
    limit: usize,
) -> Result<Bytes, Reply> {
    let key = if limit < ctx.max_body { "limits.max_backpressure" } else { "rpc.max_frame_size" };
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(ctx.request_timeout, collect).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "body not received within {} ms (server.api_request_timeout_ms)",
                ctx.request_timeout.as_millis()
            ),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body exceeds {limit} bytes ({key})")))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"))),
    }
}

/// The bearer token of a request (empty when there is none).
pub fn bearer(headers: &hyper::HeaderMap) -> &str {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Compares a presented token with the expected one in constant time:
/// their SHA-256 digests, so neither the contents nor the length of the
/// expected token shows in the time taken.
pub fn token_eq(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (p, e) = (Sha256::digest(presented.as_bytes()), Sha256::digest(expected.as_bytes()));
    bool::from(p.as_slice().ct_eq(e.as_slice()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole_whatever_their_length() {
        assert!(super::token_eq("0123456789abcdef", "0123456789abcdef"));
        assert!(!super::token_eq("0123456789abcde", "0123456789abcdef"));
        assert!(!super::token_eq("0123456789abcdefg", "0123456789abcdef"));
        assert!(!super::token_eq("", "0123456789abcdef"));
    }
}
