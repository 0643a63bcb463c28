//! What the server owes the client: one entry per request forwarded in the current batches, in order, plus
//! responses pgtenant makes itself. Server responses are matched against it to know which to swallow (the
//! answers to requests pgtenant injected) and where to insert pgtenant's own (the ParseComplete of a Parse
//! the server connection already had). When an error makes the server skip the rest of a batch, the
//! entries skipped say what to undo: a client's statement that was never created, a server statement that
//! was never prepared, a name that was not closed after all.

use super::statements::Statement;
use bytes::Bytes;
use std::collections::VecDeque;

/// Something to undo when the server skipped (or failed) the request it belonged to.
#[derive(Debug, Clone)]
pub enum Undo {
    /// The client's statement of this name (if it still maps to this server name) does not exist.
    ForgetClientStatement {
        client_name: String,
        server_name: String,
    },
    /// The client's Close of this statement did not happen.
    RestoreClientStatement {
        client_name: String,
        statement: Statement,
    },
    /// The server connection still has this statement (a Close of it was skipped).
    ServerStillHas(String),
}

#[derive(Debug)]
pub enum Expect {
    /// A Parse sent upstream. `server_name` is set for named statements; `swallow` for Parses pgtenant
    /// injected; `client_name` when the client's own named Parse.
    Parse {
        server_name: Option<String>,
        swallow: bool,
        client_name: Option<String>,
    },
    Bind {
        server_name: Option<String>,
        swallow: bool,
        /// The client's name for the statement, to put back into errors that name the server's.
        client_name: Option<String>,
    },
    /// `names`: (server name, client name) of a named statement.
    DescribeStatement {
        names: Option<(String, String)>,
    },
    DescribePortal,
    Execute,
    /// A Close sent upstream; `swallow` (with the statement's name) for Closes pgtenant injected.
    Close {
        swallow: Option<String>,
    },
    Sync,
    Query,
    FunctionCall,
    /// Not a response: marks where the client ended a COPY (CopyDone or CopyFail), so that the Syncs the
    /// client sent between a COPY's Execute and its end, which the server ignores in copy-in mode, can be
    /// told from the Syncs it will answer.
    CopyEnd,
    /// A response pgtenant gives in the server's place, when it reaches the head of the queue.
    Synthetic {
        frame: Bytes,
        undo: Option<Undo>,
    },
}

impl Expect {
    /// Ends with ReadyForQuery.
    pub fn is_sync_point(&self) -> bool {
        matches!(self, Expect::Sync | Expect::Query | Expect::FunctionCall)
    }

    pub fn synthetic(frame: Bytes) -> Self {
        Expect::Synthetic { frame, undo: None }
    }

    /// What skipping this entry undoes.
    fn undo_when_skipped(self, outcome: &mut Outcome) {
        match self {
            Expect::Parse {
                server_name: Some(server_name),
                client_name,
                ..
            } => {
                if let Some(client_name) = client_name {
                    outcome.undo.push(Undo::ForgetClientStatement {
                        client_name,
                        server_name: server_name.clone(),
                    });
                }
                outcome.forget.push(server_name);
            }
            Expect::Close {
                swallow: Some(server_name),
            } => outcome.undo.push(Undo::ServerStillHas(server_name)),
            Expect::Synthetic {
                undo: Some(undo), ..
            } => outcome.undo.push(undo),
            _ => {}
        }
    }
}

/// The queue and what it implies.
#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// The server is in copy-in mode and the client has not yet ended the COPY: Syncs the client sends
    /// now are ignored by the server ("The backend will ignore Flush and Sync messages received during
    /// copy-in mode").
    in_copy_in: bool,
    /// The server skips messages until a Sync the client has not sent yet (an error in an extended-protocol
    /// COPY, whose Sync the server ignored in copy-in mode): the connection is not free until then.
    awaiting_sync: bool,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
}

/// What one server message means for pgtenant's books.
#[derive(Debug, Default)]
pub struct Outcome {
    pub disposition: Option<Disposition>,
    /// Server-side names the connection does not have after all (their Parse failed or was skipped).
    pub forget: Vec<String>,
    pub undo: Vec<Undo>,
    /// A ReadyForQuery was received.
    pub ready: bool,
    /// Syncs the client sent that the server ignores (they came during copy-in mode).
    pub syncs_ignored: usize,
    /// A response that no request at the head of the queue accounts for (a ParseComplete, BindComplete or
    /// CloseComplete, or a ReadyForQuery while the head is no Sync): pgtenant's books and the server
    /// disagree. It is forwarded, and logged with the queue's head.
    pub unmatched: bool,
}

impl Expectations {
    pub fn push(&mut self, e: Expect) {
        if self.queue.capacity() == 0 {
            self.queue = super::spare_queues::take();
        }
        self.queue.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Gives up the queue's room when nothing is expected (a client idle between transactions), for the
    /// next transaction on the thread.
    pub fn shed(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            super::spare_queues::give_back(std::mem::take(&mut self.queue));
        }
    }

    /// The client sent a Sync: whether the server will answer it with a ReadyForQuery (it will not while
    /// it is in copy-in mode). Pushes the Sync if so.
    pub fn client_sync(&mut self) -> bool {
        if self.in_copy_in {
            return false;
        }
        self.awaiting_sync = false;
        self.push(Expect::Sync);
        true
    }

    /// The server waits for a Sync the client still owes (see `awaiting_sync`).
    pub fn awaiting_sync(&self) -> bool {
        self.awaiting_sync
    }

    /// The client ended a COPY (CopyDone or CopyFail).
    pub fn client_copy_end(&mut self) {
        if self.in_copy_in {
            self.in_copy_in = false;
        } else if !self.queue.is_empty() {
            // The server has not yet said it entered copy-in mode: mark the spot for when it does.
            self.queue.push_back(Expect::CopyEnd);
        }
    }

    /// The server entered copy-in mode (CopyInResponse or CopyBothResponse) for the request at the head:
    /// the client's Syncs up to its end of the COPY will get no answer. Removes them and returns how many.
    fn copy_in_started(&mut self) -> usize {
        let mut ignored = 0;
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Expect::Sync => {
                    self.queue.remove(i);
                    ignored += 1;
                }
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    return ignored;
                }
                _ => i += 1,
            }
        }
        self.in_copy_in = true;
        ignored
    }

    /// Drops COPY end markers at the head: their COPY is over (or never started).
    fn drop_spent_markers(&mut self) {
        while matches!(self.queue.front(), Some(Expect::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Synthetic responses now at the head, in order, removed from the queue.
    pub fn take_synthetic_head(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Expect::Synthetic { .. }) = self.queue.front() {
            if let Some(Expect::Synthetic { frame, .. }) = self.queue.pop_front() {
                out.push(frame);
            }
        }
        out
    }

    /// Matches one server message (by tag) against the head.
    pub fn on_server_message(&mut self, tag: u8) -> Outcome {
        let mut outcome = Outcome {
            disposition: Some(Disposition::Forward),
            ..Outcome::default()
        };
        self.drop_spent_markers();
        match tag {
            // Asynchronous messages may come at any time.
            b'N' | b'A' | b'S' => {}
            b'G' | b'W' => outcome.syncs_ignored = self.copy_in_started(),
            b'E' => {
                // An error ends copy-in mode: the server now skips to the next Sync (or, in a simple
                // query, ends it), so the client's Syncs count again.
                self.in_copy_in = false;
                let in_simple = matches!(
                    self.queue.front(),
                    Some(Expect::Query) | Some(Expect::FunctionCall)
                );
                if !in_simple {
                    // The failing request and everything up to the next Sync get no other response.
                    while let Some(front) = self.queue.front() {
                        if front.is_sync_point() {
                            break;
                        }
                        if let Some(entry) = self.queue.pop_front() {
                            entry.undo_when_skipped(&mut outcome);
                        }
                    }
                    self.drop_spent_markers();
                    if self.queue.is_empty() {
                        // No Sync of the client's is pending: the server skips until the next one.
                        self.awaiting_sync = true;
                    }
                }
            }
            b'Z' => {
                match self.queue.front() {
                    Some(e) if e.is_sync_point() => {
                        self.queue.pop_front();
                    }
                    Some(_) => outcome.unmatched = true,
                    None => {}
                }
                outcome.ready = true;
            }
            b'1' => {
                if let Some(Expect::Parse { swallow, .. }) = self.queue.front() {
                    if *swallow {
                        outcome.disposition = Some(Disposition::Swallow);
                    }
                    self.queue.pop_front();
                } else {
                    outcome.unmatched = true;
                }
            }
            b'2' => {
                if let Some(Expect::Bind { swallow, .. }) = self.queue.front() {
                    if *swallow {
                        outcome.disposition = Some(Disposition::Swallow);
                    }
                    self.queue.pop_front();
                } else {
                    outcome.unmatched = true;
                }
            }
            b'3' => {
                if let Some(Expect::Close { swallow }) = self.queue.front() {
                    if swallow.is_some() {
                        outcome.disposition = Some(Disposition::Swallow);
                    }
                    self.queue.pop_front();
                } else {
                    outcome.unmatched = true;
                }
            }
            b'T' | b'n' => {
                if matches!(
                    self.queue.front(),
                    Some(Expect::DescribeStatement { .. }) | Some(Expect::DescribePortal)
                ) {
                    self.queue.pop_front();
                }
            }
            b'C' | b'I' | b's' => {
                if matches!(self.queue.front(), Some(Expect::Execute)) {
                    self.queue.pop_front();
                }
            }
            _ => {}
        }
        self.drop_spent_markers();
        outcome
    }

    /// The first entries of the queue, for a log line when the books and the server disagree.
    pub fn head_for_log(&self) -> String {
        let shown: Vec<String> = self
            .queue
            .iter()
            .take(4)
            .map(|e| format!("{e:?}"))
            .collect();
        format!("{} queued: [{}]", self.queue.len(), shown.join(", "))
    }

    /// The server-side statement name of the Bind at the head, if any (for stale-plan handling).
    pub fn head_bind_statement(&self) -> Option<&str> {
        match self.queue.front() {
            Some(Expect::Bind { server_name, .. }) => server_name.as_deref(),
            _ => None,
        }
    }

    /// (server name, client name) of the statement the request at the head names, if any.
    pub fn head_statement_names(&self) -> Option<(&str, &str)> {
        match self.queue.front() {
            Some(Expect::Bind {
                server_name: Some(s),
                client_name: Some(c),
                ..
            }) => Some((s, c)),
            Some(Expect::DescribeStatement {
                names: Some((s, c)),
            }) => Some((s, c)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, swallow: bool, client: Option<&str>) -> Expect {
        Expect::Parse {
            server_name: Some(name.into()),
            swallow,
            client_name: client.map(str::to_string),
        }
    }

    #[test]
    fn a_completion_no_request_accounts_for_is_reported_unmatched() {
        let mut q = Expectations::default();
        q.push(Expect::Execute);
        q.push(Expect::Sync);
        for tag in [b'1', b'2', b'3'] {
            let outcome = q.on_server_message(tag);
            assert!(outcome.unmatched, "{}", tag as char);
            assert_eq!(outcome.disposition, Some(Disposition::Forward));
        }
        assert_eq!(q.len(), 2, "nothing was taken off the queue");
        assert!(q.head_for_log().starts_with("2 queued: [Execute, Sync"));
        assert!(
            q.on_server_message(b'Z').unmatched,
            "a ReadyForQuery before the Execute's end"
        );
        assert!(!q.on_server_message(b'C').unmatched);
        assert!(!q.on_server_message(b'Z').unmatched);
        assert!(q.is_empty());
    }

    #[test]
    fn injected_parse_complete_is_swallowed_and_synthetic_ones_wait_their_turn() {
        let mut q = Expectations::default();
        q.push(parse("pgt_a", true, None));
        q.push(Expect::Bind {
            server_name: Some("pgt_a".into()),
            swallow: false,
            client_name: None,
        });
        q.push(Expect::synthetic(Bytes::from_static(b"3\0\0\0\x04")));
        q.push(Expect::Sync);
        assert!(q.take_synthetic_head().is_empty());
        assert_eq!(
            q.on_server_message(b'1').disposition,
            Some(Disposition::Swallow)
        );
        assert_eq!(
            q.on_server_message(b'2').disposition,
            Some(Disposition::Forward)
        );
        assert_eq!(q.take_synthetic_head().len(), 1);
        assert!(q.on_server_message(b'Z').ready);
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_skips_to_the_sync_and_undoes_every_skipped_parse_and_close() {
        let mut q = Expectations::default();
        q.push(parse("pgt_bad", false, Some("bad")));
        q.push(parse("pgt_other", false, Some("other")));
        q.push(Expect::Bind {
            server_name: Some("pgt_bad".into()),
            swallow: false,
            client_name: Some("bad".into()),
        });
        q.push(Expect::Close {
            swallow: Some("pgt_old".into()),
        });
        q.push(Expect::Synthetic {
            frame: Bytes::from_static(b"1\0\0\0\x04"),
            undo: Some(Undo::ForgetClientStatement {
                client_name: "dup".into(),
                server_name: "pgt_dup".into(),
            }),
        });
        q.push(Expect::Execute);
        q.push(Expect::Sync);
        let e = q.on_server_message(b'E');
        assert_eq!(
            e.forget,
            vec!["pgt_bad".to_string(), "pgt_other".to_string()]
        );
        assert_eq!(e.undo.len(), 4, "{:?}", e.undo);
        assert_eq!(q.len(), 1, "only the Sync remains");
        assert!(q.on_server_message(b'Z').ready);
        assert!(q.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_wait_for_its_ready_for_query() {
        let mut q = Expectations::default();
        q.push(Expect::Query);
        q.push(Expect::Parse {
            server_name: None,
            swallow: false,
            client_name: None,
        });
        q.on_server_message(b'E');
        assert_eq!(q.len(), 2);
        assert!(q.on_server_message(b'Z').ready);
        assert_eq!(q.len(), 1);
    }

    /// tokio-postgres: Bind, Execute, Sync before the data; CopyDone, Sync after. The first Sync comes
    /// during copy-in mode and gets no ReadyForQuery, whether the server's CopyInResponse arrives before or
    /// after the client's CopyDone.
    #[test]
    fn syncs_sent_during_copy_in_get_no_ready_for_query() {
        for copy_done_first in [false, true] {
            let mut q = Expectations::default();
            q.push(Expect::Bind {
                server_name: None,
                swallow: false,
                client_name: None,
            });
            q.push(Expect::Execute);
            assert!(q.client_sync());
            let mut ignored = 0;
            assert_eq!(
                q.on_server_message(b'2').disposition,
                Some(Disposition::Forward)
            );
            if copy_done_first {
                q.client_copy_end();
                assert!(q.client_sync());
                ignored += q.on_server_message(b'G').syncs_ignored;
            } else {
                ignored += q.on_server_message(b'G').syncs_ignored;
                assert!(!q.client_sync(), "a Sync inside copy-in mode is ignored");
                q.client_copy_end();
                assert!(q.client_sync());
            }
            assert_eq!(ignored, 1);
            q.on_server_message(b'C');
            assert!(q.on_server_message(b'Z').ready);
            assert!(q.is_empty(), "{q:?}");
        }
    }

    /// pgjdbc running COPY through a plain Statement: Parse … Execute, Sync; at CopyInResponse it sends
    /// CopyFail and a second Sync. If the server's error comes before that Sync, the server skips until it:
    /// the connection is not free in between.
    #[test]
    fn an_error_after_an_ignored_sync_waits_for_the_clients_next_sync() {
        let mut q = Expectations::default();
        q.push(Expect::Execute);
        assert!(q.client_sync());
        assert_eq!(q.on_server_message(b'G').syncs_ignored, 1);
        q.client_copy_end();
        q.on_server_message(b'E');
        assert!(q.is_empty());
        assert!(
            q.awaiting_sync(),
            "the server skips until the client's next Sync"
        );
        assert!(q.client_sync());
        assert!(!q.awaiting_sync());
        assert!(q.on_server_message(b'Z').ready);
        assert!(q.is_empty());
    }

    /// An error in the middle of a COPY ends copy-in mode: the server skips to the next Sync, and a
    /// CopyFail the client sends after it leaves nothing behind.
    #[test]
    fn an_error_during_copy_in_waits_for_the_next_sync() {
        let mut q = Expectations::default();
        q.push(Expect::Execute);
        assert!(q.client_sync());
        assert_eq!(q.on_server_message(b'G').syncs_ignored, 1);
        q.on_server_message(b'E');
        q.client_copy_end();
        assert!(
            q.client_sync(),
            "after the error the server answers the Sync"
        );
        assert!(q.on_server_message(b'Z').ready);
        assert!(q.is_empty(), "{q:?}");
        // Simple query COPY with an error: the CopyDone marker is dropped with its query.
        q.push(Expect::Query);
        q.on_server_message(b'G');
        q.on_server_message(b'E');
        q.client_copy_end();
        assert!(q.on_server_message(b'Z').ready);
        assert!(q.is_empty(), "{q:?}");
    }
}
