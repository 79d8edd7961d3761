//! `allowed_origin`: which browser origins may open a WebSocket. An origin
//! is `scheme://host[:port]`; patterns match it exactly (scheme, host and
//! port, case-insensitive, default ports filled in) or by a leading `*.`
//! label for any subdomain. Prefix and suffix patterns on the raw string are
//! refused: `https://app.example.com*` would also admit
//! `https://app.example.com.evil.io`.

/// A parsed `allowed_origin` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// `*`: any origin.
    Any,
    /// Comma-separated patterns; one must match.
    List(Vec<Pattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    scheme: String,
    /// Lowercase host, without the `*.` of a wildcard.
    host: String,
    /// `*.host`: any subdomain of `host` (not `host` itself).
    subdomains: bool,
    port: Option<u16>,
}

/// `scheme://host[:port]` split and normalised; None if it is not one.
fn split(origin: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = match rest.rsplit_once(':') {
        // IPv6 literals are bracketed; a colon inside brackets is no port.
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().ok()?)),
        _ => (rest, None),
    };
    let port = port.or(match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    (!host.is_empty()).then(|| (scheme, host.to_ascii_lowercase(), port))
}

/// A `server.allowed_origins` entry that is not an origin pattern.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOriginPattern(pub String);

impl std::fmt::Display for BadOriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not an origin pattern: use `*`, an origin such as `https://app.example.com` (port optional) \
             or `https://*.example.com` for its subdomains, several separated by commas",
            self.0
        )
    }
}

impl std::error::Error for BadOriginPattern {}

impl OriginPolicy {
    /// Parses a config value; the error says what a pattern may look like.
    pub fn parse(value: &str) -> Result<OriginPolicy, BadOriginPattern> {
        if value.trim() == "*" {
            return Ok(OriginPolicy::Any);
        }
        let mut patterns = Vec::new();
        for raw in value.split(',').map(str::trim) {
            let bad = || BadOriginPattern(raw.to_string());
            let (scheme, host, port) = split(raw).ok_or_else(bad)?;
            let (host, subdomains) = match host.strip_prefix("*.") {
                Some(parent) => (parent.to_string(), true),
                None => (host, false),
            };
            if host.is_empty() || host.contains('*') || scheme.contains('*') {
                return Err(bad());
            }
            patterns.push(Pattern { scheme, host, subdomains, port });
        }
        Ok(OriginPolicy::List(patterns))
    }

    /// Whether a request with this `Origin` header may upgrade. Requests
    /// without one come from non-browser clients, which origin checks do not
    /// concern.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let patterns = match self {
            OriginPolicy::Any => return true,
            OriginPolicy::List(p) => p,
        };
        let Some((scheme, host, port)) = split(origin.trim()) else {
            return false;
        };
        patterns.iter().any(|p| {
            p.scheme == scheme
                && p.port == port
                && if p.subdomains {
                    host.strip_suffix(&p.host).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                } else {
                    host == p.host
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        OriginPolicy::parse(pattern).unwrap().allows(Some(origin))
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        assert!(allows("https://app.example.com", "https://app.example.com"));
        assert!(allows("https://app.example.com", "HTTPS://App.Example.com:443"));
        assert!(allows("http://localhost:3000", "http://localhost:3000"));
        assert!(!allows("http://localhost:3000", "http://localhost:3001"));
        assert!(!allows("https://app.example.com", "http://app.example.com"), "scheme");
        assert!(!allows("https://app.example.com", "https://app.example.com.evil.io"));
        assert!(!allows("https://app.example.com", "https://app.example.com:8443"));
        assert!(!allows("https://app.example.com", "null"));
    }

    #[test]
    fn wildcards_admit_subdomains_only() {
        let p = "https://*.example.com";
        assert!(allows(p, "https://a.example.com"));
        assert!(allows(p, "https://a.b.example.com"));
        assert!(!allows(p, "https://example.com"));
        assert!(!allows(p, "https://evilexample.com"));
        assert!(!allows(p, "https://a.example.com.evil.io"));
        assert!(!allows(p, "http://a.example.com"));
    }

    #[test]
    fn lists_any_and_no_origin() {
        let p = "https://a.io, https://*.b.io";
        assert!(allows(p, "https://a.io") && allows(p, "https://x.b.io"));
        assert!(!allows(p, "https://c.io"));
        assert!(allows("*", "anything"));
        assert!(OriginPolicy::parse("https://a.io").unwrap().allows(None));
    }

    #[test]
    fn string_prefix_and_suffix_patterns_are_refused() {
        for bad in
            ["https://app.example.com*", "*.example.com", "*example.com", "https://a*.io", "app.io", ""]
        {
            let e = OriginPolicy::parse(bad).unwrap_err();
            assert!(e.to_string().contains("https://*.example.com"), "{bad}: {e}");
        }
    }
}
