//! Weighted rendezvous (highest-random-weight) hashing, as a pure function of its inputs.
//!
//! Every client ranks a group's proxies for a `(volume, key)` the same way, in every process and
//! on every platform: the hash is FNV-1a over length-prefixed parts followed by the 64-bit
//! MurmurHash3 finaliser (`fmix64`), with no per-process seed. A proxy's score is the logarithmic
//! weighted HRW score `-weight / ln(u)`, `u` in (0, 1) drawn from `hash(key) ^ hash(proxy)`, so a
//! proxy with twice the weight owns about twice the keys, and adding a proxy to `N` moves only the
//! keys it now wins: about `1/(N+1)` of them.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// MurmurHash3's 64-bit finaliser: full avalanche of every input bit.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A stable, well-mixed 64-bit hash of a sequence of byte strings (length-prefixed, so
/// `("ab","c")` and `("a","bc")` differ).
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    fmix64(h)
}

/// The hash of a block: `(volume, key)`.
pub fn key_hash(volume: &str, key: &str) -> u64 {
    hash_parts(&[volume.as_bytes(), key.as_bytes()])
}

/// The hash of a proxy: of its stable identity, the node published in discovery (or its
/// `host:port` address when no node is published).
pub fn node_hash(address: &str) -> u64 {
    hash_parts(&[address.as_bytes()])
}

/// Weighted HRW score; higher wins. A weight of 0 never wins against a positive weight.
pub fn score(key_hash: u64, node_hash: u64, weight: u32) -> f64 {
    let h = fmix64(key_hash ^ node_hash.rotate_left(17));
    // 53 random bits mapped into the open interval (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// A node to rank: its identity and weight.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// What the rank hashes: the proxy's node name, or its address when it has none.
    pub address: &'a str,
    pub weight: u32,
}

/// Indices of `nodes` in rendezvous order for `(volume, key)`: the owner first, then the proxy that
/// takes over when the owner is down, and so on. Ties (practically impossible) break by address.
pub fn rank(volume: &str, key: &str, nodes: &[Node<'_>]) -> Vec<usize> {
    let kh = key_hash(volume, key);
    let mut scored: Vec<(f64, usize)> =
        nodes.iter().enumerate().map(|(i, n)| (score(kh, node_hash(n.address), n.weight), i)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| nodes[a.1].address.cmp(nodes[b.1].address)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The owner of `(volume, key)` among `nodes`, if any.
pub fn owner(volume: &str, key: &str, nodes: &[Node<'_>]) -> Option<usize> {
    let kh = key_hash(volume, key);
    nodes
        .iter()
        .enumerate()
        .max_by(|a, b| {
            score(kh, node_hash(a.1.address), a.1.weight)
                .total_cmp(&score(kh, node_hash(b.1.address), b.1.weight))
                .then_with(|| b.1.address.cmp(a.1.address))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(addrs: &[String]) -> Vec<Node<'_>> {
        addrs.iter().map(|a| Node { address: a, weight: 1 }).collect()
    }

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8443", i + 1)).collect()
    }

    #[test]
    fn hashes_are_fixed_across_processes_and_platforms() {
        // Golden values: a change here would re-shuffle every deployed cache.
        assert_eq!(key_hash("vol1", "chunks/0/1"), key_hash("vol1", "chunks/0/1"));
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        let golden = key_hash("vol1", "chunks/0/1");
        assert_eq!(golden, GOLDEN_KEY_HASH, "rendezvous hash changed: {golden:#x}");
        let a = addrs(5);
        let order = rank("vol1", "chunks/0/1", &nodes(&a));
        assert_eq!(order, GOLDEN_ORDER.to_vec());
    }

    const GOLDEN_KEY_HASH: u64 = 0x6eab_1c10_2e68_30c1;
    const GOLDEN_ORDER: [usize; 5] = [3, 4, 2, 0, 1];

    #[test]
    fn owner_is_first_in_rank() {
        let a = addrs(7);
        let n = nodes(&a);
        for i in 0..1000 {
            let k = format!("k{i}");
            assert_eq!(Some(rank("v", &k, &n)[0]), owner("v", &k, &n));
        }
    }

    #[test]
    fn keys_are_balanced_within_five_percent() {
        const KEYS: usize = 200_000;
        for n_nodes in [3usize, 5, 8] {
            let a = addrs(n_nodes);
            let n = nodes(&a);
            let mut counts = vec![0usize; n_nodes];
            for i in 0..KEYS {
                counts[owner("vol", &format!("blocks/{i}"), &n).unwrap()] += 1;
            }
            let ideal = KEYS as f64 / n_nodes as f64;
            let worst = counts.iter().map(|c| (*c as f64 - ideal).abs() / ideal).fold(0.0, f64::max);
            println!("balance over {n_nodes} proxies: {counts:?}, worst deviation {:.2}%", worst * 100.0);
            assert!(worst < 0.05, "imbalance {worst} over {n_nodes} proxies: {counts:?}");
        }
    }

    #[test]
    fn weights_scale_ownership() {
        const KEYS: usize = 100_000;
        let a = addrs(3);
        let n = vec![
            Node { address: &a[0], weight: 1 },
            Node { address: &a[1], weight: 2 },
            Node { address: &a[2], weight: 1 },
        ];
        let mut counts = [0usize; 3];
        for i in 0..KEYS {
            counts[owner("vol", &format!("b{i}"), &n).unwrap()] += 1;
        }
        let share = counts[1] as f64 / KEYS as f64;
        println!("weight 2 of total 4 owns {:.3} of keys", share);
        assert!((share - 0.5).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn adding_a_proxy_moves_about_one_in_n_plus_one_keys() {
        const KEYS: usize = 100_000;
        for n_nodes in [2usize, 3, 4, 8] {
            let before = addrs(n_nodes);
            let after = addrs(n_nodes + 1);
            let (nb, na) = (nodes(&before), nodes(&after));
            let mut moved = 0usize;
            let mut moved_elsewhere = 0usize;
            for i in 0..KEYS {
                let k = format!("blocks/{i}");
                let (ob, oa) = (owner("vol", &k, &nb).unwrap(), owner("vol", &k, &na).unwrap());
                if before[ob] != after[oa] {
                    moved += 1;
                    if oa != n_nodes {
                        moved_elsewhere += 1;
                    }
                }
            }
            let frac = moved as f64 / KEYS as f64;
            let ideal = 1.0 / (n_nodes + 1) as f64;
            println!(
                "adding a proxy to {n_nodes}: {:.2}% of keys moved (ideal 1/(N+1) = {:.2}%)",
                frac * 100.0,
                ideal * 100.0
            );
            assert_eq!(moved_elsewhere, 0, "keys may only move to the new proxy");
            assert!((frac - ideal).abs() / ideal < 0.05, "moved {frac}, ideal {ideal}");
        }
    }

    #[test]
    fn removing_a_proxy_moves_only_its_keys() {
        let a = addrs(5);
        let n = nodes(&a);
        let rest: Vec<String> = a.iter().filter(|x| *x != &a[2]).cloned().collect();
        let nr = nodes(&rest);
        for i in 0..20_000 {
            let k = format!("x/{i}");
            let before = &a[owner("v", &k, &n).unwrap()];
            let after = &rest[owner("v", &k, &nr).unwrap()];
            if before != &a[2] {
                assert_eq!(before, after);
            } else {
                // The key goes to its second choice: the next in rank order.
                assert_eq!(after, &a[rank("v", &k, &n)[1]]);
            }
        }
    }
}
