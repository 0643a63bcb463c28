//! Transaction pooling (being built).

pub mod expect;
pub mod statements;
