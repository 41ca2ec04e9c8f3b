//! Stored responses: what `GET /v1/responses/{id}` answers and what
//! `previous_response_id` continues from. The store is bounded, by count and by age
//! (`--responses-store-size`, `--responses-store-ttl`): the oldest response goes first
//! when it is full, and one older than the age limit is gone. A background response is
//! stored as soon as it starts, with a way to cancel it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Stops a background response's generation.
pub type Cancel = Arc<dyn Fn() + Send + Sync>;

pub struct ResponseStore {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids oldest first.
    order: VecDeque<String>,
}

struct Entry {
    response: Value,
    /// The conversation so far as chat messages (without instructions), its output
    /// included: what a continuation starts from.
    history: Vec<Value>,
    created: Instant,
    /// Set while a background response runs.
    cancel: Option<Cancel>,
}

/// Why a cancel was refused.
#[derive(Debug, PartialEq)]
pub enum CancelError {
    NotFound,
    NotBackground,
}

impl ResponseStore {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ResponseStore { capacity, ttl, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores (or replaces) a response and the conversation it ends.
    pub fn put(&self, id: &str, response: Value, history: Vec<Value>) {
        self.insert(id, response, history, None);
    }

    /// Stores a background response that is still running; `cancel` stops it.
    pub fn put_running(&self, id: &str, response: Value, cancel: Cancel) {
        self.insert(id, response, Vec::new(), Some(cancel));
    }

    fn insert(&self, id: &str, response: Value, history: Vec<Value>, cancel: Option<Cancel>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        self.expire(&mut inner);
        if let Some(e) = inner.entries.get_mut(id) {
            // A finished background response replaces its running entry, unless it was
            // cancelled meanwhile.
            if e.response.get("status").and_then(Value::as_str) == Some("cancelled") {
                return;
            }
            e.response = response;
            e.history = history;
            e.cancel = cancel;
            return;
        }
        while inner.entries.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.entries.remove(&oldest);
        }
        inner.order.push_back(id.to_string());
        inner.entries.insert(id.to_string(), Entry { response, history, created: Instant::now(), cancel });
    }

    fn expire(&self, inner: &mut Inner) {
        while let Some(id) = inner.order.front() {
            match inner.entries.get(id) {
                Some(e) if e.created.elapsed() < self.ttl => break,
                _ => {
                    let id = inner.order.pop_front().expect("a front");
                    inner.entries.remove(&id);
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        inner.entries.get(id).map(|e| e.response.clone())
    }

    /// The conversation a stored response ends, to continue from.
    pub fn history(&self, id: &str) -> Option<Vec<Value>> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        inner.entries.get(id).map(|e| e.history.clone())
    }

    /// Cancels a background response: its generation stops and its status becomes
    /// "cancelled" (one already finished is returned as it is).
    pub fn cancel(&self, id: &str) -> Result<Value, CancelError> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let e = inner.entries.get_mut(id).ok_or(CancelError::NotFound)?;
        if e.response.get("background").and_then(Value::as_bool) != Some(true) {
            return Err(CancelError::NotBackground);
        }
        if let Some(cancel) = e.cancel.take() {
            cancel();
            e.response["status"] = Value::from("cancelled");
        }
        Ok(e.response.clone())
    }

    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        inner.order.retain(|i| i != id);
        inner.entries.remove(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn bounded_by_count_oldest_first() {
        let s = ResponseStore::new(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            s.put(id, json!({"id": id}), vec![json!({"role": "user", "content": id})]);
        }
        assert_eq!(s.get("a"), None);
        assert_eq!(s.get("c"), Some(json!({"id": "c"})));
        assert_eq!(s.history("b").unwrap().len(), 1);
        assert!(s.delete("b") && s.get("b").is_none() && !s.delete("b"));
        assert!(ResponseStore::new(0, Duration::from_secs(60)).get("x").is_none());
    }

    #[test]
    fn bounded_by_age() {
        let s = ResponseStore::new(10, Duration::from_millis(30));
        s.put("a", json!({}), vec![]);
        assert!(s.get("a").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get("a").is_none() && s.history("a").is_none());
    }

    #[test]
    fn background_responses_cancel_once() {
        let s = ResponseStore::new(10, Duration::from_secs(60));
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        s.put_running("r", json!({"id": "r", "background": true, "status": "in_progress"}), Arc::new(move || flag.store(true, Ordering::SeqCst)));
        assert_eq!(s.cancel("r").unwrap()["status"], "cancelled");
        assert!(stopped.load(Ordering::SeqCst));
        // The generation's own end no longer overwrites the cancelled response.
        s.put("r", json!({"id": "r", "background": true, "status": "completed"}), vec![]);
        assert_eq!(s.get("r").unwrap()["status"], "cancelled");
        s.put("f", json!({"id": "f", "background": false}), vec![]);
        assert_eq!(s.cancel("f"), Err(CancelError::NotBackground));
        assert_eq!(s.cancel("nope"), Err(CancelError::NotFound));
    }
}
