//! The client's startup parameters as session settings: what is passed on with `set_config`, the `options`
//! parameter parsed as PostgreSQL does, the virtual schema asked for per session, and the login's last
//! messages (ParameterStatus, BackendKeyData, ReadyForQuery).

use crate::cancel::ClientKey;
use crate::clusters::route::TARGET_SESSION_ATTRS_PARAMETER;
use crate::error::UserFacing;
use crate::names::quote_literal;
use crate::protocol;
use crate::protocol::PgError;
use crate::protocol::StartupParams;
use crate::protocol::TxStatus;
use crate::refusal::Refusal;
use crate::sql::VirtualSchema;
use crate::tls::ClientStream;
use crate::upstream::SharedParameters;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

/// Startup parameters that are not session settings and so are not passed on with `set_config`.
pub(super) const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Passes the client's startup parameters (application_name, client_encoding, DateStyle, TimeZone, `-c`
/// options …) to the upstream session, as PostgreSQL would have applied them at startup.
pub(super) async fn apply_client_settings(
    conn: &mut UpstreamConn,
    params: &StartupParams,
    virtual_schema: Option<&VirtualSchema>,
) -> Result<(), PgError> {
    let settings: Vec<(String, String)> = startup_settings(params)?
        .into_iter()
        .filter(|(k, _)| k != VIRTUAL_SCHEMA_PARAMETER && k != TARGET_SESSION_ATTRS_PARAMETER)
        .map(|(k, v)| match virtual_schema {
            // search_path naming the virtual schema means the tenant's.
            Some(vs) if k.eq_ignore_ascii_case("search_path") => {
                let v = vs.rewrite_list(&v).unwrap_or(v);
                (k, v)
            }
            _ => (k, v),
        })
        .collect();
    if settings.is_empty() {
        return Ok(());
    }
    let calls: Vec<String> = settings
        .iter()
        .map(|(k, v)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(k),
                quote_literal(v)
            )
        })
        .collect();
    let sql = format!("SELECT {}", calls.join(", "));
    match conn.run_simple(&[&sql]).await {
        Ok((None, _)) => Ok(()),
        Ok((Some(fields), _)) => Err(PgError {
            severity: protocol::Severity::Fatal,
            ..PgError::from_upstream(&fields)
        }),
        Err(e) => Err(e.to_client_error()),
    }
}

/// The client's startup settings: its startup parameters that are settings, then `-c` options.
pub(super) fn startup_settings(params: &StartupParams) -> Result<Vec<(String, String)>, PgError> {
    let mut settings: Vec<(String, String)> = params
        .params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(options) = params.get("options") {
        settings.extend(parse_options(options)?);
    }
    Ok(settings)
}

/// The value the session would have for setting `name` from its startup packet (the last `-c` option,
/// else the startup parameter), found without copying the others. An `options` that cannot be parsed
/// is refused as [`startup_settings`] refuses it.
pub(super) fn startup_setting(
    params: &StartupParams,
    name: &str,
) -> Result<Option<String>, PgError> {
    if let Some(options) = params.get("options") {
        let from_options = parse_options(options)?
            .into_iter()
            .rev()
            .find(|(k, _)| k == name);
        if let Some((_, value)) = from_options {
            return Ok(Some(value));
        }
    }
    if NOT_SETTINGS.contains(&name) {
        return Ok(None);
    }
    Ok(params.get(name).map(str::to_string))
}

/// Startup parameter (or `-c` option) that picks the session's virtual schema: `off`, or a name.
pub(super) const VIRTUAL_SCHEMA_PARAMETER: &str = "pgtenant.virtual_schema";

/// The session's virtual schema: the client's choice at startup, else the tenant's, else the config's.
pub(super) fn virtual_schema_for(
    config: &crate::config::Config,
    tenant: &crate::directory::Tenant,
    params: &StartupParams,
) -> Result<Option<VirtualSchema>, PgError> {
    let chosen = startup_setting(params, VIRTUAL_SCHEMA_PARAMETER)?;
    let name = match chosen.as_deref() {
        Some("off") | Some("") => return Ok(None),
        Some(name) => name.to_string(),
        None => match tenant
            .virtual_schema
            .as_deref()
            .or(config.tenancy.virtual_schema.as_deref())
        {
            None | Some("") => return Ok(None),
            Some(name) => name.to_string(),
        },
    };
    Ok(Some(VirtualSchema::new(&name, tenant.schema.as_str())))
}

/// `options` as libpq sends it: `-c name=value` pairs (also `--name=value`), backslash escapes spaces.
pub(super) fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let assignment = if w == "-c" {
            iter.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        let Some((name, value)) = assignment.as_deref().and_then(|a| a.split_once('=')) else {
            return Err(Refusal::StartupOption(w.to_string()).to_fatal());
        };
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

pub(super) async fn send_login_ok(
    client: &mut ClientStream,
    parameters: Parameters<'_>,
    key: ClientKey,
    authenticated: bool,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    if !authenticated {
        protocol::write::authentication_ok(&mut out);
    }
    match parameters {
        Parameters::Shared(shared) => out.extend_from_slice(&encoded_statuses::of(shared)),
        Parameters::Own(own) => encoded_statuses::encode(&mut out, own),
    }
    protocol::write::backend_key_data(&mut out, key.process_id, key.secret_key);
    protocol::write::ready_for_query(&mut out, TxStatus::Idle);
    client.write_all(&out).await?;
    client.flush().await
}

/// The reported parameters a login ends with: a list shared between logins (transaction pooling: the role's
/// defaults), whose ParameterStatus messages are encoded once, or a connection's own.
pub(super) enum Parameters<'a> {
    Shared(&'a SharedParameters),
    Own(&'a [(String, String)]),
}

/// ParameterStatus messages of shared lists, encoded once per thread and list: most logins of a role share
/// one list, and encoding its dozen messages was a visible part of a login's CPU. A list is known by its
/// `Arc`, which the cache holds: it cannot be freed and another list made at its address, and its content
/// never changes (a session that changes a value copies first, `Arc::make_mut`).
mod encoded_statuses {
    use crate::protocol;
    use crate::upstream::SharedParameters;
    use bytes::{Bytes, BytesMut};
    use std::cell::RefCell;
    use std::sync::Arc;

    /// Lists kept per thread (the role-defaults variants in use at once on it).
    const KEPT: usize = 8;

    thread_local! {
        static ENCODED: RefCell<Vec<(SharedParameters, Bytes)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn encode(out: &mut BytesMut, parameters: &[(String, String)]) {
        for (name, value) in parameters {
            protocol::write::parameter_status(out, name, value);
        }
    }

    pub(super) fn of(parameters: &SharedParameters) -> Bytes {
        ENCODED.with_borrow_mut(|kept| {
            if let Some(i) = kept
                .iter()
                .position(|(list, _)| Arc::ptr_eq(list, parameters))
            {
                return kept[i].1.clone();
            }
            let mut out = BytesMut::new();
            encode(&mut out, parameters);
            let encoded = out.freeze();
            if kept.len() == KEPT {
                kept.remove(0);
            }
            kept.push((parameters.clone(), encoded.clone()));
            encoded
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn list(application_name: &str) -> SharedParameters {
            Arc::new(vec![
                ("application_name".to_string(), application_name.to_string()),
                ("TimeZone".to_string(), "UTC".to_string()),
            ])
        }

        fn encoded(parameters: &[(String, String)]) -> Vec<u8> {
            let mut out = BytesMut::new();
            encode(&mut out, parameters);
            out.to_vec()
        }

        #[test]
        fn a_shared_list_is_encoded_once_and_each_list_as_its_own() {
            let lists: Vec<SharedParameters> =
                (0..KEPT + 2).map(|i| list(&format!("app {i}"))).collect();
            for _ in 0..2 {
                for l in &lists {
                    assert_eq!(of(l).to_vec(), encoded(l), "{l:?}");
                }
            }
            let first = list("first");
            let again = of(&first);
            assert_eq!(
                of(&first).as_ptr(),
                again.as_ptr(),
                "the same list was encoded again"
            );
            // An equal list in another Arc is its own entry, with the same bytes.
            assert_eq!(of(&list("first")).to_vec(), again.to_vec());
        }
    }
}
