//! Which tool names a service answers: `db:query`, or `db:*` for a prefix.
//!
//! A service's names are fixed by the broker's config, not by what the service lists,
//! so a compromised or careless service cannot take over `http:fetch` or another
//! service's tools.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }

    /// Whether some name matches both.
    fn overlaps(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Exact(a), _) => other.matches(a),
            (_, Pattern::Exact(b)) => self.matches(b),
            (Pattern::Prefix(a), Pattern::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }
}

/// The names one service answers. Parsed from config that `Config::validate` checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answers(Vec<Pattern>);

impl Answers {
    pub(crate) fn parse(patterns: Vec<String>) -> Answers {
        Answers(
            patterns
                .into_iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(prefix) => Pattern::Prefix(prefix.to_owned()),
                    None => Pattern::Exact(p),
                })
                .collect(),
        )
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }

    pub(crate) fn overlaps(&self, other: &Answers) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match pattern {
                Pattern::Exact(name) => f.write_str(name)?,
                Pattern::Prefix(prefix) => write!(f, "{prefix}*")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(patterns: &[&str]) -> Answers {
        Answers::parse(patterns.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn prefixes_and_exact_names() {
        let db = answers(&["db:*", "search"]);
        assert!(db.matches("db:query"));
        assert!(db.matches("db:"));
        assert!(db.matches("search"));
        assert!(!db.matches("searches"));
        assert!(!db.matches("http:fetch"));
        assert_eq!(db.to_string(), "db:*, search");
    }

    #[test]
    fn overlaps_are_found_both_ways() {
        assert!(answers(&["db:*"]).overlaps(&answers(&["db:query"])));
        assert!(answers(&["db:query"]).overlaps(&answers(&["db:*"])));
        assert!(answers(&["db:*"]).overlaps(&answers(&["db:x:*"])));
        assert!(answers(&["d*"]).overlaps(&answers(&["db:*"])));
        assert!(!answers(&["db:*"]).overlaps(&answers(&["dc:*"])));
        assert!(!answers(&["db:a"]).overlaps(&answers(&["db:b"])));
    }
}
