//! The command line of the `pgtenant` binary: its definitions (`args`) and the handlers of its commands,
//! a file per group (`tenant`, `cluster`, `migrate`, `token`, `serve`); loading the configuration and the
//! admin connection they share are here.

pub(crate) mod args;
pub(crate) mod cluster;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod tenant;
pub(crate) mod token;

use anyhow::{Context, Result};
use pgtenant::config::Config;

pub(crate) fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading {}", path.display()))
}

pub(crate) async fn connect_admin(config: &Config) -> Result<tokio_postgres::Client> {
    pgtenant::upstream_admin::connect_admin(config)
        .await
        .context("connecting to the database as the admin role")
}
