//! [`Shards`]: a map from string keys split over 64 shared hash maps, so a copy costs 64
//! pointers and a change copies only the shard it touches. A program holds its affiliates,
//! links and coupons (100,000s of them) in these: an API edit of one entity makes a new
//! program in microseconds instead of copying all of them (decision 0046).
//!
//! Not a persistent map in the full sense: a shard (1/64 of the map) is copied whole on its
//! first change after a copy. The well-known persistent maps (`im`, `rpds`) are MPL-licensed,
//! which our licence policy (deny.toml) keeps out.

use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, Xxh3DefaultBuilder};

const SHARDS: usize = 64;

type Shard<V> = HashMap<String, V, Xxh3DefaultBuilder>;

/// A map of string keys; see the module docs. Iteration order is unspecified: callers that
/// need one sort ([`Shards::sorted`]).
#[derive(Debug)]
pub struct Shards<V> {
    shards: Arc<Vec<Arc<Shard<V>>>>,
    len: usize,
}

impl<V> Clone for Shards<V> {
    fn clone(&self) -> Self {
        Shards { shards: Arc::clone(&self.shards), len: self.len }
    }
}

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Shards {
            shards: Arc::new((0..SHARDS).map(|_| Arc::new(Shard::with_hasher(Xxh3DefaultBuilder::new()))).collect()),
            len: 0,
        }
    }
}

fn shard_of(key: &str) -> usize {
    // The high bits: the shard's own map hashes with the same function and uses the low ones.
    (xxh3_64(key.as_bytes()) >> 58) as usize % SHARDS
}

impl<V> Shards<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.shards.iter().flat_map(|s| s.keys())
    }

    /// Every entry in key order.
    pub fn sorted(&self) -> Vec<(&String, &V)> {
        let mut all: Vec<(&String, &V)> = self.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }
}

impl<V: Clone> Shards<V> {
    /// Inserts, copying the key's shard first if another copy of the map shares it.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard_of(&key)]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`, copying its shard first if another copy of the map shares it.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Changes every value `f` returns true for (it may change the value it is given),
    /// copying only the shards where something changed.
    pub fn update_where(&mut self, mut f: impl FnMut(&V) -> Option<V>) {
        let shards = Arc::make_mut(&mut self.shards);
        for shard in shards.iter_mut() {
            let changes: Vec<(String, V)> = shard.iter().filter_map(|(k, v)| f(v).map(|n| (k.clone(), n))).collect();
            if changes.is_empty() {
                continue;
            }
            let shard = Arc::make_mut(shard);
            for (k, v) in changes {
                shard.insert(k, v);
            }
        }
    }
}

impl<V: Clone> FromIterator<(String, V)> for Shards<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut maps: Vec<Shard<V>> = (0..SHARDS).map(|_| Shard::with_hasher(Xxh3DefaultBuilder::new())).collect();
        let mut len = 0;
        for (k, v) in iter {
            if maps[shard_of(&k)].insert(k, v).is_none() {
                len += 1;
            }
        }
        Shards { shards: Arc::new(maps.into_iter().map(Arc::new).collect()), len }
    }
}

impl<V: PartialEq> PartialEq for Shards<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V: Eq> Eq for Shards<V> {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_until_a_change_and_then_differs_only_there() {
        let a: Shards<u32> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
        assert_eq!((a.len(), a.get("k7"), a.get("nope")), (1000, Some(&7), None));
        let mut b = a.clone();
        assert_eq!(b.insert("k7".into(), 70), Some(7));
        assert_eq!(b.insert("new".into(), 1), None);
        assert_eq!((a.get("k7"), b.get("k7"), a.len(), b.len()), (Some(&7), Some(&70), 1000, 1001));
        let shared = a.shards.iter().zip(b.shards.iter()).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert!(shared >= SHARDS - 2, "only the touched shards were copied: {shared} shared");
        assert_ne!(a, b);
        b.update_where(|v| (*v % 100 == 0).then_some(v + 1));
        assert_eq!((b.get("k100"), a.get("k100")), (Some(&101), Some(&100)));
        let sorted: Vec<&String> = a.sorted().into_iter().map(|(k, _)| k).take(3).collect();
        assert_eq!(sorted, ["k0", "k1", "k10"]);
        assert_eq!(a.clone(), a);
        assert_eq!((b.remove("k7"), b.remove("k7"), b.len(), a.get("k7")), (Some(70), None, 1000, Some(&7)));
    }
}
