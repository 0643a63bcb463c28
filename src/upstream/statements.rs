//! The server side of named prepared statements in transaction pooling: the name a statement gets on a
//! server connection (`pgt_<hash>` of its query and parameter types, `_g<N>` for a generation prepared again
//! after DDL), and which of those names a connection has prepared (bounded, least recently used first out).

use aws_lc_rs::digest;
use std::collections::HashMap;

/// The server-side name of a statement: the same for the same query and parameter types.
pub fn server_name(query: &[u8], param_types: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(query.len() as u64).to_be_bytes());
    ctx.update(query);
    ctx.update(param_types);
    let d = ctx.finish();
    format!("pgt_{}", hex::encode(&d.as_ref()[..12]))
}

/// The server-side name of generation `generation` of a statement (0: the base name).
pub fn with_generation(base: &str, generation: u32) -> String {
    if generation == 0 {
        base.to_string()
    } else {
        format!("{base}_g{generation}")
    }
}

/// The base name and generation of a server-side name.
pub fn generation_of(name: &str) -> (&str, u32) {
    match name.rsplit_once("_g") {
        Some((base, g)) => match g.parse() {
            Ok(g) => (base, g),
            Err(_) => (name, 0),
        },
        None => (name, 0),
    }
}

/// Server-side statements prepared on one server connection, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// name → last use tick
    names: HashMap<String, u64>,
    tick: u64,
    /// Statements the server reported as stale (a table changed under them): to be closed before reuse.
    stale: Vec<String>,
}

impl ServerStatements {
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub fn touch(&mut self, name: &str) {
        self.tick += 1;
        if let Some(t) = self.names.get_mut(name) {
            *t = self.tick;
        }
    }

    pub fn insert(&mut self, name: String) {
        self.tick += 1;
        self.names.insert(name, self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
        self.stale.clear();
    }

    /// The server said this statement's plan no longer fits: close it on the server before the next use.
    pub fn mark_stale(&mut self, name: &str) {
        if self.names.remove(name).is_some() {
            self.stale.push(name.to_string());
        }
    }

    pub fn take_stale(&mut self) -> Vec<String> {
        std::mem::take(&mut self.stale)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The least recently used name, to close when the cache is full.
    pub fn least_recently_used(&self) -> Option<String> {
        self.names
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_depend_on_query_and_types() {
        let a = server_name(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        assert_eq!(a, server_name(b"SELECT $1", &[0, 1, 0, 0, 0, 23]));
        assert_ne!(a, server_name(b"SELECT $1", &[0, 1, 0, 0, 0, 25]));
        assert_ne!(a, server_name(b"SELECT $2", &[0, 1, 0, 0, 0, 23]));
        assert!(a.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn generations_round_trip() {
        let base = server_name(b"SELECT 1", &[0, 0]);
        assert_eq!(with_generation(&base, 0), base);
        assert_eq!(
            generation_of(&with_generation(&base, 3)),
            (base.as_str(), 3)
        );
        assert_eq!(generation_of(&base), (base.as_str(), 0));
    }

    #[test]
    fn server_cache_evicts_least_recently_used() {
        let mut cache = ServerStatements::default();
        cache.insert("a".into());
        cache.insert("b".into());
        cache.touch("a");
        assert_eq!(cache.least_recently_used().as_deref(), Some("b"));
    }
}
