//! What a token lets a connection join: topic (roadrunner) or channel
//! (webrocket) names, exact or prefix patterns ending in `*` (`news.*`
//! fits `news.eu` and `news.eu.sport`; `*` alone fits every name).

/// Patterns a claim may hold; more is a refused token, not a long scan.
pub const MAX_PATTERNS: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl Grants {
    /// The grants of a claim's list; None if it has more than `MAX_PATTERNS`
    /// or an empty pattern.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Option<Grants> {
        if patterns.len() > MAX_PATTERNS {
            return None;
        }
        let mut g = Grants::default();
        for p in patterns {
            let p = p.as_ref();
            match p.strip_suffix('*') {
                Some(prefix) => g.prefixes.push(prefix.into()),
                None if p.is_empty() => return None,
                None => g.exact.push(p.into()),
            }
        }
        Some(g)
    }

    pub fn allows(&self, name: &str) -> bool {
        self.exact.iter().any(|e| **e == *name) || self.prefixes.iter().any(|p| name.starts_with(&**p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefix_patterns() {
        let g = Grants::parse(&["news.*", "chat"]).unwrap();
        assert!(g.allows("news.eu"));
        assert!(g.allows("news.eu.sport"));
        assert!(g.allows("chat"));
        assert!(!g.allows("news"), "`news.*` does not fit `news` itself");
        assert!(!g.allows("chat.1"));
        assert!(!g.allows("private"));
        assert!(Grants::parse(&["*"]).unwrap().allows("anything"));
        assert!(!Grants::parse::<&str>(&[]).unwrap().allows("x"), "an empty list grants nothing");
        assert_eq!(Grants::parse(&[""]), None);
        assert_eq!(Grants::parse(&vec!["a"; MAX_PATTERNS + 1]), None);
    }
}
