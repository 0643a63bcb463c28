//! The names every part of pgtenant passes around: a tenant's role and schema, a cluster, and the quoting
//! that puts a name or a value into SQL. Kept apart from the modules that read them from the directory so
//! that configuration, pools and the migrator can name a cluster or a role without depending on each other.

use std::fmt;

/// Name of a PostgreSQL role (a tenant's login role).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(String);

/// Name of a tenant's schema.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

macro_rules! identifier_newtype {
    ($t:ident) => {
        impl $t {
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The name quoted as an SQL identifier.
            pub fn quoted(&self) -> String {
                quote_ident(&self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
identifier_newtype!(RoleName);
identifier_newtype!(SchemaName);

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The cluster `[upstream]` names; it holds the directory.
pub const DEFAULT_CLUSTER: &str = "default";

/// Name of a cluster (`pgtenant.clusters.name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The default cluster's name.
    pub fn default_cluster() -> Self {
        Self(DEFAULT_CLUSTER.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_CLUSTER
    }

    /// What the directory accepts as a name: lower-case letters, digits and `_`, starting with a letter, at
    /// most 40 characters (it appears in environment variable names).
    pub fn is_valid(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
            && name.len() <= 40
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

impl Default for ClusterName {
    fn default() -> Self {
        Self::default_cluster()
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(RoleName::new("tenant_1").quoted(), "\"tenant_1\"");
    }

    #[test]
    fn cluster_names_are_what_the_directory_accepts() {
        assert!(ClusterName::is_valid("eu_2"));
        assert!(!ClusterName::is_valid("2eu"));
        assert!(!ClusterName::is_valid("EU"));
        assert!(ClusterName::default_cluster().is_default());
    }
}
