//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2), parsed with httparse.
//! Anything that is not a valid upgrade gets a plain HTTP error, never a hang.

use tungstenite::handshake::derive_accept_key;

/// Requests whose headers are larger than this are refused (431).
pub const MAX_REQUEST_HEAD: usize = 8192;
const MAX_HEADERS: usize = 48;

/// A valid upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    pub origin: Option<String>,
    /// Headers a backend hook may need: Cookie, Authorization, Origin,
    /// X-Forwarded-For (lower-case names).
    pub forward: Vec<(&'static str, String)>,
    /// A connection token: `?token=` (first) or `Authorization: Bearer`.
    pub token: Option<String>,
    /// `X-Real-IP`, which only a trusted proxy may set (`limits::client_address`).
    pub real_ip: Option<String>,
    accept: String,
}

/// Request headers passed on to backend hooks.
pub const FORWARDED: [&str; 4] = ["cookie", "authorization", "origin", "x-forwarded-for"];

/// A refusal, sent as a plain HTTP response before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    /// An extra response header, e.g. `Sec-WebSocket-Version: 13` on 426.
    pub header: Option<(&'static str, &'static str)>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError { status, message: message.into(), header: None }
    }

    /// The full HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let body = format!("{}\n", self.message);
        let extra = self.header.map(|(k, v)| format!("{k}: {v}\r\n")).unwrap_or_default();
        http_response(self.status, "text/plain; charset=utf-8", &extra, body.as_bytes())
    }
}

/// A complete `Connection: close` HTTP/1.1 response; `extra_headers` are
/// whole `Name: value\r\n` lines.
pub fn http_response(status: u16, content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let reason =
        hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Upgrade {
    /// The 101 response that completes the handshake.
    pub fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            self.accept
        )
        .into_bytes()
    }
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns the head's length; bytes after it are frames.
pub fn parse(buf: &[u8]) -> Result<Option<(Upgrade, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Err(HttpError::new(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::new(431, "too many headers")),
        Err(e) => return Err(HttpError::new(400, format!("malformed HTTP request: {e}"))),
    };
    if req.method != Some("GET") {
        let mut e = HttpError::new(405, "WebSocket upgrades use GET");
        e.header = Some(("Allow", "GET"));
        return Err(e);
    }
    if req.version != Some(1) {
        return Err(HttpError::new(400, "WebSocket upgrades need HTTP/1.1"));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        let mut e = HttpError::new(426, "this endpoint speaks WebSocket only");
        e.header = Some(("Upgrade", "websocket"));
        return Err(e);
    }
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        let mut e = HttpError::new(426, "unsupported Sec-WebSocket-Version (13 required)");
        e.header = Some(("Sec-WebSocket-Version", "13"));
        return Err(e);
    }
    let key = header("Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| valid_key(k))
        .ok_or_else(|| HttpError::new(400, "missing or invalid Sec-WebSocket-Key"))?;
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let bearer = header("Authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
    });
    let token = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .or(bearer);
    let forward = FORWARDED.iter().filter_map(|name| header(name).map(|v| (*name, v.to_string()))).collect();
    Ok(Some((
        Upgrade {
            path: path.to_string(),
            origin: header("Origin").map(str::to_string),
            forward,
            token,
            real_ip: header("X-Real-IP").map(str::to_string),
            accept: derive_accept_key(key.as_bytes()),
        },
        len,
    )))
}

/// A key is the base64 encoding of 16 bytes: 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://app.example.com\r\n\r\n";

    #[test]
    fn accepts_rfc_example() {
        let (up, len) = parse(GOOD.as_bytes()).unwrap().unwrap();
        assert_eq!(len, GOOD.len());
        assert_eq!(up.path, "/ws");
        assert_eq!(up.origin.as_deref(), Some("https://app.example.com"));
        assert_eq!(up.forward, [("origin", "https://app.example.com".to_string())]);
        let resp = String::from_utf8(up.response()).unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn token_from_the_query_first_then_the_bearer_header() {
        let (up, _) = parse(GOOD.as_bytes()).unwrap().unwrap();
        assert_eq!(up.token, None);
        let q = GOOD.replace("/ws?x=1", "/ws?x=1&token=a.b%2Bc");
        assert_eq!(parse(q.as_bytes()).unwrap().unwrap().0.token.as_deref(), Some("a.b+c"));
        assert_eq!(parse(q.as_bytes()).unwrap().unwrap().0.path, "/ws");
        let h = GOOD.replace("\r\n\r\n", "\r\nAuthorization: bearer  h.e.x \r\nX-Real-IP: 1.2.3.4\r\n\r\n");
        let (up, _) = parse(h.as_bytes()).unwrap().unwrap();
        assert_eq!(up.token.as_deref(), Some("h.e.x"));
        assert_eq!(up.real_ip.as_deref(), Some("1.2.3.4"));
        let both = q.replace("\r\n\r\n", "\r\nAuthorization: Bearer other\r\n\r\n");
        assert_eq!(parse(both.as_bytes()).unwrap().unwrap().0.token.as_deref(), Some("a.b+c"));
        let basic = GOOD.replace("\r\n\r\n", "\r\nAuthorization: Basic dXNlcjpwdw==\r\n\r\n");
        assert_eq!(parse(basic.as_bytes()).unwrap().unwrap().0.token, None);
    }

    #[test]
    fn incomplete_then_too_large() {
        assert_eq!(parse(&GOOD.as_bytes()[..40]), Ok(None));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(parse(huge.as_bytes()).unwrap_err().status, 431);
    }

    #[test]
    fn refusals() {
        let plain = "GET /ws HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse(plain.as_bytes()).unwrap_err().status, 426);
        let post = GOOD.replacen("GET", "POST", 1);
        assert_eq!(parse(post.as_bytes()).unwrap_err().status, 405);
        let v8 = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(parse(v8.as_bytes()).unwrap_err().status, 426);
        let badkey = GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(parse(badkey.as_bytes()).unwrap_err().status, 400);
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n").unwrap_err().status, 400);
        let resp = String::from_utf8(parse(plain.as_bytes()).unwrap_err().response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("Connection: close"));
    }
}
