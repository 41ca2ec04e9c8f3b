//! Injected faults, for tests only: a list read once at start (`SLUICE_FAULTS`) of places
//! that panic, fail or slow down, so that tests can show what happens when a stage worker
//! panics, an engine step fails or the disk fills. Nothing is injected unless the list
//! names the place; a place not named costs its caller one `Option` check.
//!
//! The list is comma-separated entries `PLACE:ACTION[:PARAM=VALUE]`:
//!
//! - `stage:NAME:panic[:nth=N]` the Nth item (1 by default) the stage NAME handles panics;
//! - `engine:step:panic[:nth=N]` the Nth engine step fails;
//! - `engine:step:sleep:ms=M` every engine step takes M ms longer;
//! - `batch:write:fail[:after=N]` writing `run-batch`'s output fails as a full disk does,
//!   after N whole lines (0 by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What an injected fault does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Panics at the Nth hit (counted from 1), once.
    Panic { nth: u64 },
    /// Sleeps at every hit.
    Sleep(Duration),
    /// Fails (the caller says how) at every hit after the first `after`.
    Fail { after: u64 },
}

/// One place where a fault is injected, shared by every worker that passes it.
#[derive(Debug)]
pub struct FaultPoint {
    pub place: String,
    pub action: Action,
    hits: AtomicU64,
}

impl FaultPoint {
    /// Counts a pass: panics or sleeps as the fault says; true when a `fail` fault fires
    /// (the caller then fails as it would for real).
    pub fn hit(&self) -> bool {
        let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        match self.action {
            Action::Panic { nth } if n == nth => panic!("injected fault: {} panics at hit {n}", self.place),
            Action::Panic { .. } => false,
            Action::Sleep(d) => {
                std::thread::sleep(d);
                false
            }
            Action::Fail { after } => n > after,
        }
    }
}

/// The faults to inject; empty in normal use.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    points: Vec<Arc<FaultPoint>>,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Reads a list (see the module's documentation).
    pub fn parse(list: &str) -> Result<Faults, String> {
        let mut points = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parts: Vec<&str> = entry.split(':').collect();
            if parts.len() < 3 || parts.len() > 4 {
                return Err(format!("{entry:?} is not PLACE:ACTION[:PARAM=VALUE] (e.g. stage:tokenize:panic:nth=3)"));
            }
            let place = format!("{}:{}", parts[0], parts[1]);
            let param = |name: &str, default: Option<u64>| -> Result<u64, String> {
                match parts.get(3) {
                    None => default.ok_or_else(|| format!("{entry:?}: {} needs {name}=N", parts[2])),
                    Some(p) => match p.split_once('=') {
                        Some((k, v)) if k == name => v.parse().map_err(|_| format!("{entry:?}: {name} must be a whole number")),
                        _ => Err(format!("{entry:?}: {} takes {name}=N, not {p:?}", parts[2])),
                    },
                }
            };
            let action = match parts[2] {
                "panic" => Action::Panic { nth: param("nth", Some(1))?.max(1) },
                "sleep" => Action::Sleep(Duration::from_millis(param("ms", None)?)),
                "fail" => Action::Fail { after: param("after", Some(0))? },
                other => return Err(format!("{entry:?}: the action {other:?} is not one of panic, sleep, fail")),
            };
            let known = match parts[0] {
                "stage" => matches!(action, Action::Panic { .. } | Action::Sleep(_)),
                "engine" => parts[1] == "step" && matches!(action, Action::Panic { .. } | Action::Sleep(_)),
                "batch" => parts[1] == "write" && matches!(action, Action::Fail { .. }),
                _ => false,
            };
            if !known {
                return Err(format!(
                    "{entry:?}: no such fault; the places are stage:NAME (panic, sleep), engine:step (panic, sleep) and batch:write (fail)"
                ));
            }
            points.push(Arc::new(FaultPoint { place, action, hits: AtomicU64::new(0) }));
        }
        Ok(Faults { points })
    }

    /// The fault injected at `place` (e.g. "stage:tokenize"), if any.
    pub fn at(&self, place: &str) -> Option<Arc<FaultPoint>> {
        self.points.iter().find(|p| p.place == place).cloned()
    }

    /// The places named, for checking them against what exists.
    pub fn places(&self) -> impl Iterator<Item = &str> {
        self.points.iter().map(|p| p.place.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_read_into_places_and_actions() {
        let f = Faults::parse("stage:tokenize:panic:nth=3, engine:step:sleep:ms=20,batch:write:fail:after=2").unwrap();
        assert_eq!(f.at("stage:tokenize").unwrap().action, Action::Panic { nth: 3 });
        assert_eq!(f.at("engine:step").unwrap().action, Action::Sleep(Duration::from_millis(20)));
        assert_eq!(f.at("batch:write").unwrap().action, Action::Fail { after: 2 });
        assert!(f.at("stage:render").is_none());
        assert!(Faults::parse("").unwrap().is_empty());
    }

    #[test]
    fn wrong_entries_are_refused_with_the_entry() {
        for bad in ["stage:x", "stage:x:explode", "engine:step:sleep", "batch:write:panic", "disk:x:fail", "stage:x:panic:n=2", "stage:x:panic:nth=a"] {
            let e = Faults::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_panic_fires_once_at_its_hit_and_a_failure_after_its_count() {
        let f = Faults::parse("stage:a:panic:nth=2,batch:write:fail:after=1").unwrap();
        let p = f.at("stage:a").unwrap();
        assert!(!p.hit());
        assert!(std::panic::catch_unwind(|| p.hit()).is_err());
        assert!(!p.hit());
        let w = f.at("batch:write").unwrap();
        assert_eq!((w.hit(), w.hit(), w.hit()), (false, true, true));
    }
}
