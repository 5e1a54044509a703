//! Token buckets per key (a client address, a node name), in bounded
//! memory: past `max_tracked` keys the least recently seen is forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Buckets<K> {
    burst: f64,
    refill: Duration,
    max_tracked: usize,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(burst: u32, refill: Duration, max_tracked: usize) -> Self {
        Buckets {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            max_tracked: max_tracked.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has a token left; if not, the seconds until it has.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        let now = Instant::now();
        let map = self.map.lock().expect("bucket lock");
        match map.get(key) {
            Some(b) => self.wait(self.level(b, now)),
            None => Ok(()),
        }
    }

    /// Takes a token from `key`'s bucket; if there is none, the seconds
    /// until there is.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.map.lock().expect("bucket lock");
        if !map.contains_key(key) && map.len() >= self.max_tracked {
            let oldest = map.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let burst = self.burst;
        let bucket = map.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.level(bucket, now);
        self.wait(tokens)?;
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.tokens + gained).min(self.burst)
    }

    fn wait(&self, tokens: f64) -> Result<(), u64> {
        if tokens >= 1.0 {
            return Ok(());
        }
        let secs = ((1.0 - tokens) * self.refill.as_secs_f64()).ceil() as u64;
        Err(secs.max(1))
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.map.lock().expect("bucket lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_waits_and_memory_stays_bounded() {
        let b = Buckets::new(3, Duration::from_secs(10), 2);
        for _ in 0..3 {
            assert_eq!(b.take(&"a"), Ok(()));
        }
        assert_eq!(b.check(&"a"), Err(10));
        assert_eq!(b.take(&"a"), Err(10));
        assert_eq!(b.check(&"b"), Ok(()));
        b.take(&"b").unwrap();
        b.take(&"c").unwrap();
        assert_eq!(b.tracked(), 2, "the oldest key was forgotten");
        assert_eq!(b.check(&"a"), Ok(()), "a was the oldest");
    }
}
