//! Claim paths: where in a token's claims a value lives, written as dotted names (`auth.user_claim`,
//! `auth.org_claim`).
//!
//! Providers put custom claims under names that hold dots and slashes themselves (Auth0 requires URL-like
//! namespaces: `https://app.example.com/claims`), so a path is not split blindly at every dot: at each level the
//! longest claim name that matches the rest of the path (whole, or followed by a dot) is taken. So
//! `https://app.example.com/claims.user_id` finds `{"https://app.example.com/claims": {"user_id": …}}`, and
//! `org.id` finds `{"org": {"id": …}}`, or `{"org.id": …}` if the token has a claim of that very name.

use serde_json::{Map, Value};

/// A parsed claim path. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ClaimPath(String);

impl ClaimPath {
    /// Checks a configured path: not blank, no empty step (`a..b`, a leading or trailing dot).
    pub(super) fn parse(text: &str) -> Result<ClaimPath, String> {
        if text.trim().is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text != text.trim() {
            return Err("must not start or end with spaces".to_owned());
        }
        if text.starts_with('.') || text.ends_with('.') || text.contains("..") {
            return Err(format!("{text:?} has an empty step between dots"));
        }
        Ok(ClaimPath(text.to_owned()))
    }

    /// The value the path names in `claims`, if any.
    pub(super) fn resolve<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let mut object = claims;
        let mut rest = self.0.as_str();
        loop {
            let (value, after) = longest_step(object, rest)?;
            match after {
                None => return Some(value),
                Some(after) => {
                    object = value.as_object()?;
                    rest = after;
                }
            }
        }
    }
}

/// The longest name in `object` that is `path` itself or a prefix of it followed by a dot: its value and what
/// follows the dot.
fn longest_step<'a, 'p>(
    object: &'a Map<String, Value>,
    path: &'p str,
) -> Option<(&'a Value, Option<&'p str>)> {
    if let Some(value) = object.get(path) {
        return Some((value, None));
    }
    path.rmatch_indices('.').find_map(|(dot, _)| {
        object
            .get(&path[..dot])
            .map(|value| (value, Some(&path[dot + 1..])))
    })
}
