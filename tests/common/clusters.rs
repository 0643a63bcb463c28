//! Helpers for tests that add clusters to a directory: the ADD CLUSTER request, adding it as the CLI does,
//! and a config file for the `pgtenant` binary.

use super::*;
use pgtenant::clusters::ops::AddCluster;

pub fn add_request(name: &str, port: u16, replica_of: Option<&str>) -> AddCluster {
    AddCluster {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        database: Some(DATABASE.into()),
        admin_user: None,
        sslmode: None,
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        replica_of: replica_of.map(str::to_string),
    }
}

/// Adds a cluster with the library call the CLI uses.
pub async fn add_cluster(db: &TestDb, request: AddCluster) {
    let admin = db.superuser().await;
    let clusters = pgtenant::clusters::load_with(&admin, &db.config)
        .await
        .expect("clusters");
    pgtenant::clusters::ops::add_cluster(&admin, &db.config, &clusters, &request)
        .await
        .expect("add cluster");
}

/// A config file for the `pgtenant` binary pointing at `db`'s directory, with cluster b's password.
pub fn cli_config(db: &TestDb, dir: &std::path::Path, placement: &str) -> std::path::PathBuf {
    let c = &db.config;
    let text = format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{}\"\nadmin_user = \"{}\"\n\
         admin_password = \"{}\"\nserver_secret = \"{SERVER_SECRET}\"\n\n\
         [tenancy]\ntenant_migrations_dir = \"{}\"\nshared_migrations_dir = \"{}\"\n\
         placement = \"{placement}\"\n\n\
         [clusters.b]\nadmin_password = \"{}\"\n",
        c.upstream.port,
        c.upstream.database,
        c.upstream.admin_user,
        c.upstream
            .admin_password
            .as_ref()
            .map(pgtenant::secret::Secret::expose)
            .unwrap_or_default(),
        c.tenancy.tenant_migrations_dir.display(),
        c.tenancy.shared_migrations_dir.display(),
        cluster().cluster.superuser_password(),
    );
    let path = dir.join(format!("{placement}.toml"));
    std::fs::write(&path, text).expect("config file");
    path
}
