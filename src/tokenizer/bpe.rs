//! Byte-level BPE merging within one pre-token: repeatedly merge the adjacent pair with the
//! lowest merge rank (leftmost on ties), over a linked list with a priority queue, so long
//! pre-tokens cost O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::HashMap;

/// Merge rules: (left id, right id) → (rank, merged id).
pub type MergeTable = HashMap<(u32, u32), (u32, u32)>;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// Merges the token ids of one pre-token's characters and appends the result to `out`.
pub fn merge(initial: &[u32], merges: &MergeTable, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = initial
        .iter()
        .enumerate()
        .map(|(i, &id)| Symbol {
            id,
            prev: i.checked_sub(1),
            next: (i + 1 < initial.len()).then_some(i + 1),
            alive: true,
        })
        .collect();
    // (rank, left position, left id, right id): min-heap by rank, then position.
    let mut queue: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
    let push_pair = |queue: &mut BinaryHeap<_>, symbols: &[Symbol], left: usize| {
        if let Some(right) = symbols[left].next {
            let (l, r) = (symbols[left].id, symbols[right].id);
            if let Some(&(rank, _)) = merges.get(&(l, r)) {
                queue.push(Reverse((rank, left, l, r)));
            }
        }
    };
    for i in 0..symbols.len() {
        push_pair(&mut queue, &symbols, i);
    }
    while let Some(Reverse((_, left, l, r))) = queue.pop() {
        // Skip pairs that changed since they were queued.
        let Some(right) = symbols[left].next else {
            continue;
        };
        if !symbols[left].alive || symbols[left].id != l || symbols[right].id != r {
            continue;
        }
        let (_, merged) = merges[&(l, r)];
        symbols[left].id = merged;
        symbols[right].alive = false;
        symbols[left].next = symbols[right].next;
        if let Some(after) = symbols[right].next {
            symbols[after].prev = Some(left);
        }
        if let Some(before) = symbols[left].prev {
            push_pair(&mut queue, &symbols, before);
        }
        push_pair(&mut queue, &symbols, left);
    }
    let mut cursor = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cursor {
        out.push(symbols[i].id);
        cursor = symbols[i].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_first_and_leftmost_on_ties() {
        // a=0 b=1 ab=2 bb=3 abb=4
        let merges: MergeTable = [((0, 1), (0, 2)), ((1, 1), (1, 3)), ((2, 1), (2, 4))]
            .into_iter()
            .collect();
        let mut out = Vec::new();
        merge(&[0, 1, 1], &merges, &mut out); // a b b → ab b → abb
        assert_eq!(out, [4]);
        out.clear();
        merge(&[1, 1, 1], &merges, &mut out); // b b b → bb b (leftmost)
        assert_eq!(out, [3, 1]);
    }

    #[test]
    fn a_long_run_is_not_quadratic() {
        let merges: MergeTable = [((0, 0), (0, 1)), ((1, 1), (1, 2))].into_iter().collect();
        let n = if cfg!(miri) { 4_000 } else { 100_000 };
        let input = vec![0u32; n];
        let mut out = Vec::new();
        merge(&input, &merges, &mut out);
        assert_eq!(out.len(), n / 4);
        assert!(out.iter().all(|&t| t == 2));
    }
}
