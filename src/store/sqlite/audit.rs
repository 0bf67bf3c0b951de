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

/// The columns [`event_from_row`] reads, as a literal for `concat!`.
macro_rules! audit_columns {
    () => {
        "SELECT id, at, type, user_id, actor_id, ip, user_agent, request_id, detail FROM audit_events"
    };
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEvent> {
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
        detail: serde_json::from_str(&detail).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, e.into())
        })?,
    })
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
            let before = query.before_id.unwrap_or(i64::MAX);
            let kind = query.kind.map(|k| k.as_str());
            // One statement per filter, so that each walks its own index ((user_id, id),
            // (type, id), or the key) newest first, rather than the whole table.
            let mut stmt = c.prepare_cached(match (query.user_id, kind) {
                (None, None) => {
                    concat!(audit_columns!(), " WHERE id < ?1 ORDER BY id DESC LIMIT ?2")
                }
                (Some(_), None) => concat!(
                    audit_columns!(),
                    " WHERE user_id = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2"
                ),
                (None, Some(_)) => concat!(
                    audit_columns!(),
                    " WHERE type = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2"
                ),
                (Some(_), Some(_)) => concat!(
                    audit_columns!(),
                    " WHERE user_id = ?3 AND type = ?4 AND id < ?1 ORDER BY id DESC LIMIT ?2"
                ),
            })?;
            let rows = match (query.user_id, kind) {
                (None, None) => stmt.query_map(params![before, query.limit], event_from_row),
                (Some(user), None) => {
                    stmt.query_map(params![before, query.limit, user], event_from_row)
                }
                (None, Some(kind)) => {
                    stmt.query_map(params![before, query.limit, kind], event_from_row)
                }
                (Some(user), Some(kind)) => {
                    stmt.query_map(params![before, query.limit, user, kind], event_from_row)
                }
            }?;
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

#[cfg(test)]
mod tests {
    use tokio_rusqlite::rusqlite;

    /// The plan SQLite makes for a statement (EXPLAIN QUERY PLAN's details, joined).
    fn plan(c: &rusqlite::Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map([1, 50, 7], |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn each_filter_walks_its_own_index() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../../../migrations/sqlite/0006_audit.sql"))
            .unwrap();
        let by_user = plan(
            &c,
            concat!(
                audit_columns!(),
                " WHERE user_id = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2"
            ),
        );
        assert!(by_user.contains("audit_events_user"), "{by_user}");
        let by_type = plan(
            &c,
            concat!(
                audit_columns!(),
                " WHERE type = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2"
            ),
        );
        assert!(by_type.contains("audit_events_type"), "{by_type}");
        for sql in [by_user, by_type] {
            assert!(!sql.contains("TEMP B-TREE"), "no sort: {sql}");
        }
    }
}
