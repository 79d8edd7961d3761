//! The ws2api proxy dialect (docs/protocols.md §4): a client at
//! `ws://gateway/<ClientId>` is authorized by `GET {backend}/<ClientId>`, its
//! messages become `POST {backend}/<ClientId>`, its end `DELETE`. The rules
//! here are pure; the shard does the calls.

/// Longest ClientId in bytes.
pub const MAX_CLIENT_ID: usize = 128;

/// The ClientId in `path` under the vhost prefix `prefix` (which ends with
/// `/`): one non-empty segment of unreserved URL characters.
pub fn client_id<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let id = path.strip_prefix(prefix)?;
    let ok = !id.is_empty()
        && id.len() <= MAX_CLIENT_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    ok.then_some(id)
}

/// `{backend}/<ClientId>`, whether or not the base ends with `/`.
pub fn client_url(backend: &str, id: &str) -> String {
    format!("{}/{id}", backend.trim_end_matches('/'))
}

/// The connect answer allows the upgrade: 2xx and a body of exactly `ok`.
pub fn connect_allowed(status: u16, body: &[u8]) -> bool {
    (200..300).contains(&status) && body == b"ok"
}

/// The `DELETE` body: the close reason; empty for a clean close without
/// one; `abnormal closure` when no Close frame was exchanged.
pub fn close_body(reason: Option<&str>) -> String {
    reason.unwrap_or("abnormal closure").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert_eq!(client_id("/", "/user-42"), Some("user-42"));
        assert_eq!(client_id("/chat/", "/chat/a.b_c~d"), Some("a.b_c~d"));
        assert_eq!(client_id("/", "/"), None);
        assert_eq!(client_id("/", "/a/b"), None);
        assert_eq!(client_id("/", "/a%20b"), None);
        assert_eq!(client_id("/chat/", "/other/x"), None);
        assert_eq!(client_id("/", &format!("/{}", "x".repeat(129))), None);
    }

    #[test]
    fn urls_and_verdicts() {
        assert_eq!(client_url("http://b:5000", "id"), "http://b:5000/id");
        assert_eq!(client_url("http://b:5000/api/", "id"), "http://b:5000/api/id");
        assert!(connect_allowed(200, b"ok"));
        assert!(connect_allowed(204, b"ok"));
        assert!(!connect_allowed(200, b"ok\n"));
        assert!(!connect_allowed(403, b"ok"));
        assert_eq!(close_body(None), "abnormal closure");
        assert_eq!(close_body(Some("")), "");
    }
}
