//! Client-side buffers handed from one client to the next on the same thread: the transaction relay's
//! (what is read from the client, what is bound for it) and a login's read-ahead (`client_socket`). An
//! idle transaction-pooled client holds none (`txn::turn::shed_idle_buffers` gives them up), so without
//! this every transaction of a busy client allocated fresh ones and grew them, and every login allocated
//! its read-ahead. A given-up buffer is kept here instead, up to [`KEPT`] of them per thread, and the next
//! client that has bytes to read, or takes a server connection, takes one. A kept buffer is empty: what
//! another client's bytes left in its spare room is never readable (a read or a write only appends), so
//! nothing passes from one tenant's session to another's.

/// The room of a buffer taken for a read: most requests of OLTP clients, startup packets and tokens fit.
pub const FIRST_READ: usize = 1000;
use bytes::BytesMut;
use std::cell::RefCell;

/// Buffers kept per thread: a busy runtime thread has about half as many clients in a transaction at once
/// (two buffers each).
const KEPT: usize = 128;
/// Larger buffers (grown for a large request or COPY) are freed, not kept.
const LARGEST_KEPT: usize = 8 * FIRST_READ;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `buffer` for the next reader if it is empty, holds an allocation of its own (no frame split off
/// it is still alive) and is not large; frees it otherwise.
pub fn give_back(mut buffer: BytesMut) {
    if !buffer.is_empty() || !buffer.try_reclaim(FIRST_READ) || buffer.capacity() > LARGEST_KEPT {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(buffer);
        }
    });
}

/// A kept buffer, or an unallocated one when none is kept.
pub fn take() -> BytesMut {
    SPARE
        .with_borrow_mut(|spare| spare.pop())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_spares() {
        while take().capacity() > 0 {}
    }

    #[test]
    fn a_given_back_buffer_is_taken_again_whole() {
        drain_spares();
        let mut buffer = BytesMut::with_capacity(FIRST_READ);
        buffer.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        let frame = buffer.split_to(buffer.len());
        drop(frame);
        let address = buffer.as_ptr() as usize;
        give_back(buffer);
        let again = take();
        assert!(again.capacity() >= FIRST_READ, "{}", again.capacity());
        assert!(again.is_empty());
        // The same allocation, from its start.
        assert!(address - again.as_ptr() as usize <= FIRST_READ);
        assert_eq!(take().capacity(), 0, "only one was kept");
    }

    #[test]
    fn buffers_in_use_large_or_beyond_the_bound_are_not_kept() {
        drain_spares();
        let mut shared = BytesMut::with_capacity(FIRST_READ);
        shared.extend_from_slice(b"abcd");
        let frame = shared.split_to(4);
        give_back(shared);
        assert_eq!(take().capacity(), 0, "a frame split off it is still alive");
        drop(frame);

        let mut holding = BytesMut::with_capacity(FIRST_READ);
        holding.extend_from_slice(b"x");
        give_back(holding);
        assert_eq!(take().capacity(), 0, "it still holds bytes");

        give_back(BytesMut::with_capacity(LARGEST_KEPT * 2));
        assert_eq!(take().capacity(), 0, "too large to keep");

        give_back(BytesMut::new());
        assert_eq!(take().capacity(), 0, "nothing allocated, nothing kept");

        for _ in 0..KEPT + 10 {
            give_back(BytesMut::with_capacity(FIRST_READ));
        }
        let mut kept = 0;
        while take().capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }
}
