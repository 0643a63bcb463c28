//! The admin channel's command language: keywords (any case), names as bare words or quoted ('…' or "…"),
//! statements separated by `;`.

use crate::limits::Limit;

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowTenants,
    ShowPools,
    ShowClients,
    ShowServers,
    ShowMigrations {
        tenant: Option<String>,
    },
    ShowConfig,
    ShowVersion,
    CreateTenant {
        name: String,
        admin_email: String,
        ddl: bool,
        /// `ON CLUSTER c`; `None`: as `tenancy.placement` says.
        cluster: Option<String>,
    },
    /// Every cluster: role, address, status, tenants, connections, size, replica lag.
    ShowClusters,
    /// Check a cluster and record it in the directory.
    AddCluster(crate::clusters::ops::AddCluster),
    Migrate {
        tenant: Option<String>,
        dry_run: bool,
    },
    SuspendTenant {
        tenant: String,
    },
    ResumeTenant {
        tenant: String,
    },
    DropTenant {
        tenant: String,
        confirm: Option<String>,
    },
    CheckTenants,
    ShowStats,
    /// Hold new transactions of a tenant (or of all).
    Pause {
        tenant: Option<String>,
    },
    /// Let paused transactions go on.
    Unpause {
        tenant: Option<String>,
    },
    Shutdown,
    Reload,
    Help,
    /// Recent refused logins, newest first.
    ShowLogins,
    /// Refuse the token with this `jti` from now on; with `sessions`, end the sessions it opened.
    RevokeToken {
        jti: String,
        sessions: bool,
    },
    /// Refuse every token of the user (all its memberships) issued until now; with `sessions`, end its
    /// sessions.
    RevokeUser {
        email: String,
        sessions: bool,
    },
    /// Refuse the user's logins and end its sessions / undo.
    DisableUser {
        email: String,
    },
    EnableUser {
        email: String,
    },
    /// Every tenant's limits: its own values, or the defaults it follows.
    ShowLimits,
    /// `ALTER TENANT x SET setting = value` (`Some(ms)`, 0: off), `… RESET setting` / `RESET ALL` (`None`:
    /// back to the `[limits]` default).
    AlterTenantLimits {
        tenant: String,
        changes: Vec<(Limit, Option<u32>)>,
    },
    /// `MOVE TENANT x TO c [DRY RUN]`: start or resume the tenant's move to cluster c.
    MoveTenant {
        tenant: String,
        cluster: String,
        /// `OFFLINE`: copied with COPY during the switch.
        offline: bool,
        dry_run: bool,
    },
    /// `CANCEL MOVE x`: before the switch, drop what the target got.
    CancelMove {
        tenant: String,
    },
    /// `FINISH MOVE x`: after the switch, drop the tenant's copy on the source.
    FinishMove {
        tenant: String,
    },
    /// Every tenant move on record.
    ShowMoves,
}

/// What was wrong with a command, with a hint toward the right form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub hint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Semicolon,
}

fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == ';' {
            chars.next();
            tokens.push(Token::Semicolon);
        } else if c == '-' && text_starts_comment(&mut chars.clone()) {
            // `-- comment` to the end of the line.
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == quote => {
                        if chars.peek() == Some(&quote) {
                            chars.next();
                            value.push(quote);
                        } else {
                            break;
                        }
                    }
                    Some(other) => value.push(other),
                    None => {
                        return Err(SyntaxError {
                            message: format!("unterminated quoted string starting with {quote}"),
                            hint: format!("close it with {quote}"),
                        })
                    }
                }
            }
            tokens.push(Token::Quoted(value));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ';' || c == '\'' || c == '"' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

fn text_starts_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    chars.next() == Some('-') && chars.next() == Some('-')
}

/// Parses a Query message's text into its statements. An empty text gives no statements.
pub fn parse(text: &str) -> Result<Vec<Command>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut commands = Vec::new();
    for statement in tokens.split(|t| *t == Token::Semicolon) {
        if statement.is_empty() {
            continue;
        }
        commands.push(parse_statement(statement)?);
    }
    Ok(commands)
}

struct Cursor<'a> {
    tokens: &'a [Token],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn keyword(&mut self, word: &str) -> bool {
        match self.tokens.get(self.pos) {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(word) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }
    fn keywords(&mut self, words: &[&str]) -> bool {
        let start = self.pos;
        if words.iter().all(|w| self.keyword(w)) {
            true
        } else {
            self.pos = start;
            false
        }
    }
    /// A name: a bare word or a quoted string.
    fn name(&mut self) -> Option<String> {
        match self.tokens.get(self.pos) {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => {
                self.pos += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }
    fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }
    /// The remaining tokens' text, words and quoted strings joined by spaces; consumes them.
    fn rest_text(&mut self) -> String {
        let text: Vec<&str> = self.tokens[self.pos.min(self.tokens.len())..]
            .iter()
            .map(|t| match t {
                Token::Word(w) | Token::Quoted(w) => w.as_str(),
                Token::Semicolon => ";",
            })
            .collect();
        self.pos = self.tokens.len();
        text.join(" ")
    }
}

/// The form of ALTER TENANT, for hints.
const ALTER_TENANT_FORM: &str =
    "ALTER TENANT x SET statement_timeout = '5s' | ALTER TENANT x RESET statement_timeout | ALL";

fn limit_named(name: &str) -> Result<Limit, SyntaxError> {
    Limit::parse(name).ok_or_else(|| SyntaxError {
        message: format!("unknown tenant setting \"{name}\""),
        hint: "the settings are statement_timeout, lock_timeout, idle_in_transaction_session_timeout and transaction_timeout".into(),
    })
}

/// `setting = value` or `setting TO value` (value `DEFAULT`: back to the default) of ALTER TENANT … SET.
fn limit_assignment(text: &str) -> Result<(Limit, Option<u32>), SyntaxError> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    let rest = rest.trim_start();
    let value = if let Some(v) = rest.strip_prefix('=') {
        v
    } else if rest
        .get(..3)
        .is_some_and(|to| to.eq_ignore_ascii_case("to "))
    {
        &rest[3..]
    } else {
        return Err(SyntaxError {
            message: format!("syntax error in admin command \"ALTER TENANT … SET {text}\""),
            hint: format!("expected: {ALTER_TENANT_FORM}"),
        });
    };
    let limit = limit_named(name)?;
    let value = value.trim();
    if value.eq_ignore_ascii_case("default") {
        return Ok((limit, None));
    }
    let ms = crate::limits::parse_ms(value).map_err(|message| SyntaxError {
        message: format!("invalid value for {}: {message}", limit.setting_name()),
        hint: "give a duration such as '500ms', '5s', '2min' or '1h'; 0 turns the limit off".into(),
    })?;
    Ok((limit, Some(ms)))
}

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

fn parse_statement(tokens: &[Token]) -> Result<Command, SyntaxError> {
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

mod forms;

pub use forms::FORMS;

#[cfg(test)]
mod tests;
