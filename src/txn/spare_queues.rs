//! The room of emptied queues, kept per thread for the next transaction (as `spare_buffers` keeps client
//! buffers): an idle client holds none, and a busy one allocates none per transaction. A kept queue is
//! empty.

use super::expect::Expect;
use std::cell::RefCell;
use std::collections::VecDeque;

const KEPT: usize = 64;
/// A queue grown for a long pipeline is freed, not kept.
const LARGEST_KEPT: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<VecDeque<Expect>>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn give_back(queue: VecDeque<Expect>) {
    if !queue.is_empty() || queue.capacity() > LARGEST_KEPT {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(queue);
        }
    });
}

/// A kept queue, or an unallocated one when none is kept.
pub(super) fn take() -> VecDeque<Expect> {
    SPARE
        .with_borrow_mut(|spare| spare.pop())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_queue_is_taken_again_and_a_large_or_full_one_is_not_kept() {
        while take().capacity() > 0 {}
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(Expect::Query);
        give_back(queue);
        assert_eq!(take().capacity(), 0, "a queue holding an entry was kept");
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(Expect::Query);
        queue.clear();
        let room = queue.capacity();
        give_back(queue);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        give_back(VecDeque::with_capacity(LARGEST_KEPT * 2));
        assert_eq!(take().capacity(), 0, "a large queue was kept");
    }
}
