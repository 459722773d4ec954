//! The one priority queue: where work waits for a free slot (an agent at its concurrency
//! limit, an aggregator's LLM calls), the highest priority is served first, and within a
//! priority the oldest.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::Priority;

pub struct PriorityQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    /// Arrival counter: the tie-breaker that keeps each priority first in, first out.
    arrivals: u64,
}

struct Entry<T> {
    key: (Priority, Reverse<u64>),
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl<T> Default for PriorityQueue<T> {
    fn default() -> Self {
        PriorityQueue {
            heap: BinaryHeap::new(),
            arrivals: 0,
        }
    }
}

impl<T> PriorityQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, priority: Priority, item: T) {
        self.arrivals += 1;
        self.heap.push(Entry {
            key: (priority, Reverse(self.arrivals)),
            item,
        });
    }

    /// The highest-priority item, the oldest among equals.
    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|e| e.item)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_and_first_in_first_out_within_a_priority() {
        let mut q = PriorityQueue::new();
        q.push(Priority::Normal, "n1");
        q.push(Priority::Low, "l1");
        q.push(Priority::Normal, "n2");
        q.push(Priority::Critical, "c1");
        q.push(Priority::High, "h1");
        q.push(Priority::Critical, "c2");
        assert_eq!(q.len(), 6);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["c1", "c2", "h1", "n1", "n2", "l1"]);
        assert!(q.is_empty());
    }
}
