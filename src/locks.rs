//! Per-key async locks: operations on one process id are serialised while
//! different ids proceed in parallel. A key's lock is dropped when nobody
//! holds or waits on it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

/// Per-key async locks that are dropped when nobody holds or waits on them.
#[derive(Default)]
pub struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().expect("poisoned");
        self.guard.take();
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// A key's lock held apart from the locks' owner: it may move into a task
/// that outlives the caller.
pub struct OwnedKeyGuard {
    locks: Arc<KeyedLocks>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for OwnedKeyGuard {
    fn drop(&mut self) {
        drop(KeyGuard {
            locks: &self.locks,
            key: std::mem::take(&mut self.key),
            guard: self.guard.take(),
        });
    }
}

impl KeyedLocks {
    async fn mutex_guard(&self, key: &str) -> OwnedMutexGuard<()> {
        let mutex = self
            .0
            .lock()
            .expect("poisoned")
            .entry(key.to_owned())
            .or_default()
            .clone();
        mutex.lock_owned().await
    }

    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let guard = self.mutex_guard(key).await;
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    /// [`Self::lock`], held by a guard of its own.
    pub async fn lock_owned(self: &Arc<Self>, key: &str) -> OwnedKeyGuard {
        let guard = self.mutex_guard(key).await;
        OwnedKeyGuard {
            locks: self.clone(),
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_owned_guard_serialises_like_a_borrowed_one_and_cleans_up() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock_owned("a").await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock("a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap();
        assert!(locks.0.lock().unwrap().is_empty(), "no key left behind");
    }
}
