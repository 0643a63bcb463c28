//! One statement's tokens to a [`Command`], or a syntax error that quotes them with the form expected.

use super::limits::{limit_assignment, limit_named, ALTER_TENANT_FORM};
use super::tokens::{Cursor, Token};
use super::{Command, SyntaxError, FORMS};
use crate::limits::Limit;

fn syntax(form: &str, got: &[Token]) -> SyntaxError {
    let text: Vec<String> = got
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("'{q}'"),
            Token::Semicolon => ";".into(),
        })
        .collect();
    SyntaxError {
        message: format!("syntax error in admin command \"{}\"", text.join(" ")),
        hint: format!("expected: {form}; type HELP for every command"),
    }
}

pub(super) fn parse_statement(tokens: &[Token]) -> Result<Command, SyntaxError> {
    let mut c = Cursor { tokens, pos: 0 };
    let command = if c.keyword("SHOW") {
        let form = "SHOW TENANTS | CLUSTERS | POOLS | CLIENTS | SERVERS | MIGRATIONS [tenant] | CONFIG | VERSION | LOGINS | LIMITS | MOVES";
        if c.keyword("TENANTS") {
            Command::ShowTenants
        } else if c.keyword("CLUSTERS") {
            Command::ShowClusters
        } else if c.keyword("POOLS") {
            Command::ShowPools
        } else if c.keyword("CLIENTS") {
            Command::ShowClients
        } else if c.keyword("SERVERS") {
            Command::ShowServers
        } else if c.keyword("MIGRATIONS") {
            Command::ShowMigrations { tenant: c.name() }
        } else if c.keyword("STATS") {
            Command::ShowStats
        } else if c.keyword("CONFIG") {
            Command::ShowConfig
        } else if c.keyword("VERSION") {
            Command::ShowVersion
        } else if c.keyword("LOGINS") {
            Command::ShowLogins
        } else if c.keyword("LIMITS") {
            Command::ShowLimits
        } else if c.keyword("MOVES") {
            Command::ShowMoves
        } else {
            return Err(syntax(form, tokens));
        }
    } else if c.keyword("CREATE") {
        let form = "CREATE TENANT 'name' ADMIN 'email' [NO DDL] [ON CLUSTER c]";
        if !c.keyword("TENANT") {
            return Err(syntax(form, tokens));
        }
        let Some(name) = c.name() else {
            return Err(syntax(form, tokens));
        };
        if !c.keyword("ADMIN") {
            return Err(syntax(form, tokens));
        }
        let Some(admin_email) = c.name() else {
            return Err(syntax(form, tokens));
        };
        let ddl = !c.keywords(&["NO", "DDL"]);
        let cluster = if c.keywords(&["ON", "CLUSTER"]) {
            match c.name() {
                Some(name) => Some(name),
                None => return Err(syntax(form, tokens)),
            }
        } else {
            None
        };
        Command::CreateTenant {
            name,
            admin_email,
            ddl,
            cluster,
        }
    } else if c.keyword("ADD") {
        let form = "ADD CLUSTER name HOST 'h' [PORT n] [DATABASE 'd'] [USER 'u'] [SSLMODE m] [SSLROOTCERT 'f'] [SSLCERT 'f' SSLKEY 'f'] [REPLICA OF primary]";
        if !c.keyword("CLUSTER") {
            return Err(syntax(form, tokens));
        }
        let Some(name) = c.name() else {
            return Err(syntax(form, tokens));
        };
        let mut add = crate::clusters::ops::AddCluster {
            name,
            host: String::new(),
            port: 5432,
            database: None,
            admin_user: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            replica_of: None,
        };
        let mut host = None;
        while !c.done() {
            let value = |c: &mut Cursor<'_>| c.name().ok_or_else(|| syntax(form, tokens));
            if c.keyword("HOST") {
                host = Some(value(&mut c)?);
            } else if c.keyword("PORT") {
                add.port = value(&mut c)?
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| syntax(form, tokens))?;
            } else if c.keyword("DATABASE") {
                add.database = Some(value(&mut c)?);
            } else if c.keyword("USER") {
                add.admin_user = Some(value(&mut c)?);
            } else if c.keyword("SSLMODE") {
                add.sslmode = Some(
                    crate::clusters::parse_sslmode(&value(&mut c)?.to_ascii_lowercase())
                        .ok_or_else(|| syntax(form, tokens))?,
                );
            } else if c.keyword("SSLROOTCERT") {
                add.sslrootcert = Some(value(&mut c)?.into());
            } else if c.keyword("SSLCERT") {
                add.sslcert = Some(value(&mut c)?.into());
            } else if c.keyword("SSLKEY") {
                add.sslkey = Some(value(&mut c)?.into());
            } else if c.keywords(&["REPLICA", "OF"]) {
                add.replica_of = Some(value(&mut c)?);
            } else {
                return Err(syntax(form, tokens));
            }
        }
        add.host = host.ok_or_else(|| syntax(form, tokens))?;
        Command::AddCluster(add)
    } else if c.keyword("MOVE") {
        let form = "MOVE TENANT x TO cluster [OFFLINE] [DRY RUN]";
        if !c.keyword("TENANT") {
            return Err(syntax(form, tokens));
        }
        let Some(tenant) = c.name() else {
            return Err(syntax(form, tokens));
        };
        if !c.keyword("TO") {
            return Err(syntax(form, tokens));
        }
        let Some(cluster) = c.name() else {
            return Err(syntax(form, tokens));
        };
        let offline = c.keyword("OFFLINE");
        let dry_run = c.keywords(&["DRY", "RUN"]);
        Command::MoveTenant {
            tenant,
            cluster,
            offline,
            dry_run,
        }
    } else if c.keyword("CANCEL") || c.keyword("FINISH") {
        let cancel = matches!(&tokens[0], Token::Word(w) if w.eq_ignore_ascii_case("CANCEL"));
        let form = if cancel {
            "CANCEL MOVE x"
        } else {
            "FINISH MOVE x"
        };
        if !c.keyword("MOVE") {
            return Err(syntax(form, tokens));
        }
        let Some(tenant) = c.name() else {
            return Err(syntax(form, tokens));
        };
        if cancel {
            Command::CancelMove { tenant }
        } else {
            Command::FinishMove { tenant }
        }
    } else if c.keyword("MIGRATE") {
        let form = "MIGRATE TENANTS [DRY RUN] | MIGRATE TENANT x [DRY RUN]";
        let tenant = if c.keyword("TENANTS") || c.keyword("ALL") {
            None
        } else if c.keyword("TENANT") {
            match c.name() {
                Some(t) => Some(t),
                None => return Err(syntax(form, tokens)),
            }
        } else {
            return Err(syntax(form, tokens));
        };
        let dry_run = c.keywords(&["DRY", "RUN"]);
        Command::Migrate { tenant, dry_run }
    } else if c.keyword("PAUSE") {
        Command::Pause { tenant: c.name() }
    } else if c.keyword("SHUTDOWN") {
        Command::Shutdown
    } else if matches!(&tokens[0], Token::Word(w) if w.eq_ignore_ascii_case("RESUME"))
        && !matches!(tokens.get(1), Some(Token::Word(w)) if w.eq_ignore_ascii_case("TENANT"))
    {
        c.keyword("RESUME");
        Command::Unpause { tenant: c.name() }
    } else if c.keyword("SUSPEND") || c.keyword("RESUME") {
        let suspend = matches!(&tokens[0], Token::Word(w) if w.eq_ignore_ascii_case("SUSPEND"));
        let form = if suspend {
            "SUSPEND TENANT x"
        } else {
            "RESUME TENANT x"
        };
        if !c.keyword("TENANT") {
            return Err(syntax(form, tokens));
        }
        let Some(tenant) = c.name() else {
            return Err(syntax(form, tokens));
        };
        if suspend {
            Command::SuspendTenant { tenant }
        } else {
            Command::ResumeTenant { tenant }
        }
    } else if c.keyword("DROP") {
        let form = "DROP TENANT x [CONFIRM 'x']";
        if !c.keyword("TENANT") {
            return Err(syntax(form, tokens));
        }
        let Some(tenant) = c.name() else {
            return Err(syntax(form, tokens));
        };
        let confirm = if c.keyword("CONFIRM") {
            match c.name() {
                Some(word) => Some(word),
                None => return Err(syntax(form, tokens)),
            }
        } else {
            None
        };
        Command::DropTenant { tenant, confirm }
    } else if c.keyword("CHECK") {
        if !c.keyword("TENANTS") {
            return Err(syntax("CHECK TENANTS", tokens));
        }
        Command::CheckTenants
    } else if c.keyword("REVOKE") {
        let form = "REVOKE TOKEN 'jti' [SESSIONS] | REVOKE USER 'email' [SESSIONS]";
        let token = if c.keyword("TOKEN") {
            true
        } else if c.keyword("USER") {
            false
        } else {
            return Err(syntax(form, tokens));
        };
        let Some(name) = c.name().filter(|n| !n.is_empty()) else {
            return Err(syntax(form, tokens));
        };
        let sessions = c.keyword("SESSIONS");
        if token {
            Command::RevokeToken {
                jti: name,
                sessions,
            }
        } else {
            Command::RevokeUser {
                email: name,
                sessions,
            }
        }
    } else if c.keyword("DISABLE") || c.keyword("ENABLE") {
        let disable = matches!(&tokens[0], Token::Word(w) if w.eq_ignore_ascii_case("DISABLE"));
        let form = if disable {
            "DISABLE USER 'email'"
        } else {
            "ENABLE USER 'email'"
        };
        if !c.keyword("USER") {
            return Err(syntax(form, tokens));
        }
        let Some(email) = c.name().filter(|n| !n.is_empty()) else {
            return Err(syntax(form, tokens));
        };
        if disable {
            Command::DisableUser { email }
        } else {
            Command::EnableUser { email }
        }
    } else if c.keyword("ALTER") {
        if !c.keyword("TENANT") {
            return Err(syntax(ALTER_TENANT_FORM, tokens));
        }
        let Some(tenant) = c.name() else {
            return Err(syntax(ALTER_TENANT_FORM, tokens));
        };
        let changes = if c.keyword("SET") {
            if c.done() {
                return Err(syntax(ALTER_TENANT_FORM, tokens));
            }
            vec![limit_assignment(&c.rest_text())?]
        } else if c.keyword("RESET") {
            if c.keyword("ALL") {
                Limit::ALL.iter().map(|l| (*l, None)).collect()
            } else {
                match c.name() {
                    Some(name) => vec![(limit_named(&name)?, None)],
                    None => return Err(syntax(ALTER_TENANT_FORM, tokens)),
                }
            }
        } else {
            return Err(syntax(ALTER_TENANT_FORM, tokens));
        };
        Command::AlterTenantLimits { tenant, changes }
    } else if c.keyword("RELOAD") {
        Command::Reload
    } else if c.keyword("HELP") {
        Command::Help
    } else {
        return Err(SyntaxError {
            message: format!("unknown admin command \"{}\"", first_words(tokens)),
            hint: "type HELP for the list of commands".into(),
        });
    };
    if !c.done() {
        let form = FORMS
            .iter()
            .find(|(f, _)| {
                first_words(tokens)
                    .to_uppercase()
                    .starts_with(f.split(' ').next().unwrap_or(""))
            })
            .map(|(f, _)| *f)
            .unwrap_or("HELP");
        return Err(syntax(form, tokens));
    }
    Ok(command)
}

fn first_words(tokens: &[Token]) -> String {
    tokens
        .iter()
        .take(3)
        .map(|t| match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("'{q}'"),
            Token::Semicolon => ";".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
