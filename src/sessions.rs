//! Session hand-off on rolling restarts for tower-sessions stores (cargo feature
//! `tower-sessions`). [`HandoffStore`] wraps a store (its `MemoryStore`, say), remembers
//! which sessions it holds, and, run with [`HandoffStore::run`] on the worker's bus:
//! - in a retiring process (`--drain-sessions`, the supervisor's `{"type":"drain"}`), hands
//!   every session it holds to the replacement (`handoff` lines keyed by the session id, the
//!   cookie value the proxy pins), then says `handoff-end`;
//! - in the replacement, saves each session handed to it and adopts it, so the proxy
//!   re-pins its key there.
//!
//! A session larger than the bus's line limit ([`crate::ipc`]'s 64 KiB) is not handed off
//! and stays with the retiring process until it ends.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::ipc::{HandoffEvent, WorkerBus, MAX_LINE};

/// A session store that can hand its sessions off to the next process of its worker.
#[derive(Clone)]
pub struct HandoffStore<S> {
    inner: S,
    ids: Arc<Mutex<HashSet<Id>>>,
}

impl<S: fmt::Debug> fmt::Debug for HandoffStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffStore")
            .field("inner", &self.inner)
            .field(
                "sessions",
                &self.ids.lock().unwrap_or_else(|e| e.into_inner()).len(),
            )
            .finish()
    }
}

impl<S: SessionStore + Clone> HandoffStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ids: Arc::default(),
        }
    }

    fn held(&self) -> Vec<Id> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().copied().collect()
    }

    fn remember(&self, id: Id, held: bool) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if held {
            ids.insert(id);
        } else {
            ids.remove(&id);
        }
    }

    /// Serves the hand-off lines of `bus` until it closes: spawn it once per worker.
    pub async fn run(self, bus: WorkerBus) {
        while let Some(event) = bus.recv_handoff().await {
            match event {
                HandoffEvent::Drain => self.hand_off(&bus).await,
                HandoffEvent::Handoff { key, data } => self.adopt(&bus, &key, data).await,
                HandoffEvent::Adopted { .. } => {}
            }
        }
    }

    /// Hands every live session over, then says so.
    async fn hand_off(&self, bus: &WorkerBus) {
        let mut sent = 0usize;
        for id in self.held() {
            let Ok(Some(record)) = self.inner.load(&id).await else {
                continue;
            };
            let data = wire::to_json(&record);
            // Room for the line's own fields; a larger session stays here.
            if data.to_string().len() + 256 > MAX_LINE {
                continue;
            }
            bus.handoff(&id.to_string(), data);
            sent += 1;
        }
        bus.handoff_end();
        tracing::info!(sessions = sent, "sessions handed off to the replacement");
    }

    /// Saves a session handed over and adopts its key.
    async fn adopt(&self, bus: &WorkerBus, key: &str, data: serde_json::Value) {
        let Some(record) = wire::from_json(&data) else {
            tracing::warn!("a handed-off session is not a tower-sessions record; ignored");
            return;
        };
        if self.save(&record).await.is_ok() {
            bus.adopt(key);
        }
    }
}

#[async_trait]
impl<S: SessionStore + Clone> SessionStore for HandoffStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.inner.create(record).await?;
        self.remember(record.id, true);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.inner.save(record).await?;
        self.remember(record.id, true);
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let record = self.inner.load(id).await?;
        if record.is_none() {
            // Expired (or never here): nothing to hand off.
            self.remember(*id, false);
        }
        Ok(record)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.inner.delete(id).await?;
        self.remember(*id, false);
        Ok(())
    }
}

/// A record on the bus: `{"id":"...","data":{...},"expires":UNIX_SECONDS}` (the id's own
/// serde form is an i128, which JSON numbers cannot carry).
mod wire {
    use serde_json::{json, Value};
    use tower_sessions::cookie::time::OffsetDateTime;
    use tower_sessions::session::{Id, Record};

    pub(super) fn to_json(record: &Record) -> Value {
        json!({
            "id": record.id.to_string(),
            "data": record.data,
            "expires": record.expiry_date.unix_timestamp(),
        })
    }

    pub(super) fn from_json(v: &Value) -> Option<Record> {
        Some(Record {
            id: v.get("id")?.as_str()?.parse::<Id>().ok()?,
            data: serde_json::from_value(v.get("data")?.clone()).ok()?,
            expiry_date: OffsetDateTime::from_unix_timestamp(v.get("expires")?.as_i64()?).ok()?,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_record_crosses_the_bus_unchanged_to_the_second() {
            let mut data = std::collections::HashMap::new();
            data.insert("user".to_string(), json!("ada"));
            let expiry_date = OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
            let record = Record {
                id: Id::default(),
                data,
                expiry_date,
            };
            let line = to_json(&record).to_string();
            let back = from_json(&serde_json::from_str(&line).unwrap());
            assert_eq!(back, Some(record));
        }
    }
}
