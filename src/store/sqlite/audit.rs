//! The audit log on SQLite: writing an event inside the transaction of its change, the admin's
//! pages of events, and retention.

use tokio_rusqlite::rusqlite::{self, params};

use super::{SqliteStore, to_i64};
use crate::audit::{AuditEvent, Context, Event, Query};
use crate::store::StoreError;
use crate::tokens::{now_seconds, rfc3339};

/// Writes an event with the request's context, on the connection of the change's transaction.
/// The caller logs it ([`Event::log`]) once the transaction has committed.
pub(super) fn record(
    c: &rusqlite::Connection,
    audit: &Context,
    event: &Event,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_events (at, type, user_id, actor_id, ip, user_agent, request_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        to_i64(now_seconds()),
        event.kind.as_str(),
        event.user_id,
        audit.actor_id,
        audit.client.ip,
        audit.client.user_agent,
        audit.request_id,
        event.detail_json(),
    ])?;
    Ok(())
}

/// Writes the events, commits the transaction, then logs them: the one way a change and its
/// events are stored together.
pub(super) fn commit_with(
    tx: rusqlite::Transaction<'_>,
    audit: &Context,
    events: &[Event],
) -> rusqlite::Result<()> {
    for event in events {
        record(&tx, audit, event)?;
    }
    tx.commit()?;
    for event in events {
        event.log(audit);
    }
    Ok(())
}

impl SqliteStore {
    pub async fn record_event(&self, event: Event, audit: Context) -> Result<(), StoreError> {
        self.write(move |c| {
            record(c, &audit, &event)?;
            event.log(&audit);
            Ok(())
        })
        .await
    }

    pub async fn audit_events(&self, query: Query) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, type, user_id, actor_id, ip, user_agent, request_id, detail
                 FROM audit_events
                 WHERE id < ?1 AND (?2 IS NULL OR user_id = ?2) AND (?3 IS NULL OR type = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    query.before_id.unwrap_or(i64::MAX),
                    query.user_id,
                    query.kind.map(|k| k.as_str()),
                    query.limit
                ],
                |r| {
                    let detail: String = r.get(8)?;
                    Ok(AuditEvent {
                        id: r.get(0)?,
                        at: rfc3339(r.get(1)?),
                        kind: r.get(2)?,
                        user_id: r.get(3)?,
                        actor_id: r.get(4)?,
                        ip: r.get(5)?,
                        user_agent: r.get(6)?,
                        request_id: r.get(7)?,
                        detail: serde_json::from_str(&detail).unwrap_or_default(),
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn purge_audit(&self, before: u64, batch: u32) -> Result<u64, StoreError> {
        let before = to_i64(before);
        self.write(move |c| {
            let gone = c
                .prepare_cached(
                    "DELETE FROM audit_events WHERE id IN
                     (SELECT id FROM audit_events WHERE at < ?1 ORDER BY at LIMIT ?2)",
                )?
                .execute(params![before, batch])?;
            Ok(gone as u64)
        })
        .await
    }
}
