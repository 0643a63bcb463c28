//! JWT verification
