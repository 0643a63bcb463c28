//! What the server owes the client: one entry per request forwarded in the current batches, in order, plus
//! responses pgtenant makes itself. Server responses are matched against it to know which to swallow (the
//! ParseComplete of a Parse pgtenant injected) and where to insert pgtenant's own (the ParseComplete of a
//! Parse the server connection already had).

use bytes::Bytes;
use std::collections::VecDeque;

#[derive(Debug)]
pub enum Expect {
    /// A Parse sent upstream. `server_name` is set for named statements (removed from the connection's
    /// cache if it fails); `swallow` for Parses pgtenant injected.
    Parse {
        server_name: Option<String>,
        swallow: bool,
    },
    Bind {
        server_name: Option<String>,
    },
    DescribeStatement,
    DescribePortal,
    Execute,
    Close {
        swallow: bool,
    },
    Sync,
    Query,
    FunctionCall,
    /// A response pgtenant gives in the server's place, when it reaches the head of the queue.
    Synthetic(Bytes),
}

impl Expect {
    /// Ends with ReadyForQuery.
    pub fn is_sync_point(&self) -> bool {
        matches!(self, Expect::Sync | Expect::Query | Expect::FunctionCall)
    }
}

/// The queue and what it implies.
#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
}

/// A statement the server reported as unusable, to forget on this connection.
#[derive(Debug, Default)]
pub struct Outcome {
    pub disposition: Option<Disposition>,
    /// A Parse of this server-side name failed or was closed: the connection does not have it.
    pub forget: Option<String>,
    /// A ReadyForQuery was received.
    pub ready: bool,
}

impl Expectations {
    pub fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Synthetic responses now at the head, in order, removed from the queue.
    pub fn take_synthetic_head(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            if let Some(Expect::Synthetic(bytes)) = self.queue.pop_front() {
                out.push(bytes);
            }
        }
        out
    }

    /// Matches one server message (by tag; `error_code` for ErrorResponse) against the head.
    pub fn on_server_message(&mut self, tag: u8, error_code: Option<&str>) -> Outcome {
        let mut outcome = Outcome {
            disposition: Some(Disposition::Forward),
            ..Outcome::default()
        };
        match tag {
            // Asynchronous messages may come at any time.
            b'N' | b'A' | b'S' => {}
            b'E' => {
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
                        if let Some(Expect::Parse {
                            server_name: Some(name),
                            ..
                        }) = self.queue.pop_front()
                        {
                            outcome.forget = Some(name);
                        }
                    }
                }
                if error_code == Some("0A000") {
                    // "cached plan must not change result type": handled by the caller via Bind names.
                }
            }
            b'Z' => {
                if matches!(self.queue.front(), Some(e) if e.is_sync_point()) {
                    self.queue.pop_front();
                }
                outcome.ready = true;
            }
            b'1' => {
                if let Some(Expect::Parse { swallow, .. }) = self.queue.front() {
                    if *swallow {
                        outcome.disposition = Some(Disposition::Swallow);
                    }
                    self.queue.pop_front();
                }
            }
            b'2' => {
                if matches!(self.queue.front(), Some(Expect::Bind { .. })) {
                    self.queue.pop_front();
                }
            }
            b'3' => {
                if let Some(Expect::Close { swallow }) = self.queue.front() {
                    if *swallow {
                        outcome.disposition = Some(Disposition::Swallow);
                    }
                    self.queue.pop_front();
                }
            }
            b'T' | b'n' => {
                if matches!(
                    self.queue.front(),
                    Some(Expect::DescribeStatement) | Some(Expect::DescribePortal)
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
        outcome
    }

    /// The server-side statement name of the Bind at the head, if any (for stale-plan handling).
    pub fn head_bind_statement(&self) -> Option<&str> {
        match self.queue.front() {
            Some(Expect::Bind { server_name }) => server_name.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_parse_complete_is_swallowed_and_synthetic_ones_wait_their_turn() {
        let mut q = Expectations::default();
        q.push(Expect::Parse {
            server_name: Some("pgt_a".into()),
            swallow: true,
        });
        q.push(Expect::Bind {
            server_name: Some("pgt_a".into()),
        });
        q.push(Expect::Synthetic(Bytes::from_static(b"3\0\0\0\x04")));
        q.push(Expect::Sync);
        assert!(q.take_synthetic_head().is_empty());
        assert_eq!(
            q.on_server_message(b'1', None).disposition,
            Some(Disposition::Swallow)
        );
        assert_eq!(
            q.on_server_message(b'2', None).disposition,
            Some(Disposition::Forward)
        );
        assert_eq!(q.take_synthetic_head().len(), 1);
        let z = q.on_server_message(b'Z', None);
        assert!(z.ready);
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_skips_to_the_sync_and_forgets_a_failed_parse() {
        let mut q = Expectations::default();
        q.push(Expect::Parse {
            server_name: Some("pgt_bad".into()),
            swallow: false,
        });
        q.push(Expect::Bind {
            server_name: Some("pgt_bad".into()),
        });
        q.push(Expect::Synthetic(Bytes::from_static(b"1\0\0\0\x04")));
        q.push(Expect::Execute);
        q.push(Expect::Sync);
        let e = q.on_server_message(b'E', Some("42601"));
        assert_eq!(e.forget.as_deref(), Some("pgt_bad"));
        assert_eq!(q.len(), 1, "only the Sync remains");
        assert!(q.on_server_message(b'Z', None).ready);
        assert!(q.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_wait_for_its_ready_for_query() {
        let mut q = Expectations::default();
        q.push(Expect::Query);
        q.push(Expect::Parse {
            server_name: None,
            swallow: false,
        });
        q.on_server_message(b'E', Some("42P01"));
        assert_eq!(q.len(), 2);
        assert!(q.on_server_message(b'Z', None).ready);
        assert_eq!(q.len(), 1);
    }
}
