//! A lock-free set of ports: one bit per port of a range, taken and given
//! back with compare-and-swap, so connections toward a member never queue
//! on a lock to get a source port.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The ports of one SNAT address in use toward one member.
#[derive(Debug)]
pub struct PortSet {
    words: Box<[AtomicU64]>,
    count: u32,
    in_use: AtomicUsize,
    /// Where the next search starts. It moves on by one each time, so a
    /// port just given back is the last to be taken again: by then its
    /// TIME_WAIT toward this member is most likely over.
    cursor: AtomicUsize,
}

impl PortSet {
    /// A set of `count` ports (offsets `0..count`), all free.
    pub fn new(count: u32) -> PortSet {
        let words = (count as usize).div_ceil(64).max(1);
        PortSet {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            count,
            in_use: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn free(&self) -> usize {
        (self.count as usize).saturating_sub(self.in_use())
    }

    /// Takes a free port offset, or `None` when all are in use.
    pub fn take(&self) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        let start = (self.cursor.fetch_add(1, Ordering::Relaxed) % self.count as usize) as u32;
        let words = self.words.len();
        let start_word = (start / 64) as usize;
        let start_bit = start % 64;
        // Every word once from the start bit on, then the bits of the first
        // word below the start bit.
        for step in 0..=words {
            let word = (start_word + step) % words;
            let valid = self.valid_bits(word);
            let region = match step {
                0 => valid & (!0u64 << start_bit),
                s if s == words => valid & !(!0u64 << start_bit),
                _ => valid,
            };
            loop {
                let current = self.words[word].load(Ordering::Relaxed);
                let free = !current & region;
                if free == 0 {
                    break;
                }
                let bit = free.trailing_zeros();
                let taken = current | (1 << bit);
                if self.words[word]
                    .compare_exchange(current, taken, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.in_use.fetch_add(1, Ordering::Relaxed);
                    return Some(word as u32 * 64 + bit);
                }
            }
        }
        None
    }

    /// Takes the port at `offset`, if it is free (a connection carried
    /// over from a predecessor process holds it).
    pub fn take_exact(&self, offset: u32) -> bool {
        if offset >= self.count {
            return false;
        }
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        let taken = self.words[word].fetch_or(1 << bit, Ordering::AcqRel) & (1 << bit) != 0;
        if !taken {
            self.in_use.fetch_add(1, Ordering::Relaxed);
        }
        !taken
    }

    /// Gives back a port offset from [`take`](Self::take).
    pub fn release(&self, offset: u32) {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if let Some(word) = self.words.get(word) {
            if word.fetch_and(!(1 << bit), Ordering::AcqRel) & (1 << bit) != 0 {
                self.in_use.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn valid_bits(&self, word: usize) -> u64 {
        let bits = (self.count as usize).saturating_sub(word * 64).min(64);
        if bits == 64 {
            !0
        } else {
            (1u64 << bits) - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_exactly_is_not_given_again() {
        let set = PortSet::new(3);
        assert!(set.take_exact(1));
        assert!(!set.take_exact(1), "a port is held once");
        assert!(!set.take_exact(3), "past the range");
        let mut others = vec![set.take().unwrap(), set.take().unwrap()];
        others.sort();
        assert_eq!(others, vec![0, 2]);
        assert_eq!(set.take(), None);
        set.release(1);
        assert_eq!(set.in_use(), 2);
    }

    #[test]
    fn every_port_once_then_none_then_released_ones_again() {
        for count in [1, 16, 64, 65, 130] {
            let set = PortSet::new(count);
            let mut taken: Vec<u32> = (0..count)
                .map(|_| set.take().expect("a free port"))
                .collect();
            assert_eq!(set.take(), None, "count {count}");
            assert_eq!(set.free(), 0);
            taken.sort();
            assert_eq!(taken, (0..count).collect::<Vec<_>>(), "count {count}");
            set.release(taken[0]);
            assert_eq!(set.take(), Some(taken[0]));
            set.release(taken[0]);
            set.release(taken[0]);
            assert_eq!(
                set.in_use(),
                count as usize - 1,
                "double release counts once"
            );
        }
    }

    #[test]
    fn a_released_port_is_taken_last() {
        let set = PortSet::new(16);
        let first = set.take().unwrap();
        set.release(first);
        let next: Vec<u32> = (0..15).map(|_| set.take().unwrap()).collect();
        assert!(!next.contains(&first), "{next:?}");
        assert_eq!(set.take(), Some(first));
    }

    #[test]
    fn concurrent_takers_never_share_a_port() {
        let set = std::sync::Arc::new(PortSet::new(4000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let set = set.clone();
                std::thread::spawn(move || {
                    (0..1000).map(|_| set.take().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4000);
        assert_eq!(set.take(), None);
    }
}
