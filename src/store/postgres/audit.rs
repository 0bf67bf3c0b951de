//! The audit log on PostgreSQL: writing an event inside the transaction of its change, the
//! admin's pages of events, and retention.

use deadpool_postgres::Transaction;
use tokio_postgres::types::Json;

use super::{PostgresStore, to_i64};
use crate::audit::{AuditEvent, Context, Event, Query};
use crate::store::StoreError;
use crate::tokens::{now_seconds, rfc3339};

/// Writes an event with the request's context, in the change's transaction. The caller logs it
/// ([`Event::log`]) once the transaction has committed.
async fn record(tx: &Transaction<'_>, audit: &Context, event: &Event) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO audit_events (at, type, user_id, actor_id, ip, user_agent, request_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &to_i64(now_seconds()),
            &event.kind.as_str(),
            &event.user_id,
            &audit.actor_id,
            &audit.client.ip,
            &audit.client.user_agent,
            &audit.request_id,
            &Json(&event.detail),
        ],
    )
    .await?;
    Ok(())
}

/// Writes the events, commits the transaction, then logs them: the one way a change and its
/// events are stored together.
pub(super) async fn commit_with(
    tx: Transaction<'_>,
    audit: &Context,
    events: &[Event],
) -> Result<(), StoreError> {
    for event in events {
        record(&tx, audit, event).await?;
    }
    tx.commit().await?;
    for event in events {
        event.log(audit);
    }
    Ok(())
}

/// The columns an event is read from, as a literal for `concat!`.
macro_rules! audit_columns {
    () => {
        "SELECT id, at, type, user_id, actor_id, ip, user_agent, request_id, detail FROM audit_events"
    };
}

impl PostgresStore {
    pub async fn record_event(&self, event: Event, audit: Context) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        commit_with(tx, &audit, &[event]).await
    }

    pub async fn audit_events(&self, query: Query) -> Result<Vec<AuditEvent>, StoreError> {
        let client = self.client().await?;
        let before = query.before_id.unwrap_or(i64::MAX);
        let kind = query.kind.map(|k| k.as_str());
        // One statement per filter, so that each walks its own index ((user_id, id),
        // (type, id), or the key) newest first, rather than the whole table.
        let stmt = client
            .prepare_cached(match (query.user_id, kind) {
                (None, None) => {
                    concat!(audit_columns!(), " WHERE id < $1 ORDER BY id DESC LIMIT $2")
                }
                (Some(_), None) => concat!(
                    audit_columns!(),
                    " WHERE user_id = $3 AND id < $1 ORDER BY id DESC LIMIT $2"
                ),
                (None, Some(_)) => concat!(
                    audit_columns!(),
                    " WHERE type = $3 AND id < $1 ORDER BY id DESC LIMIT $2"
                ),
                (Some(_), Some(_)) => concat!(
                    audit_columns!(),
                    " WHERE user_id = $3 AND type = $4 AND id < $1 ORDER BY id DESC LIMIT $2"
                ),
            })
            .await?;
        let rows = match (query.user_id, kind) {
            (None, None) => client.query(&stmt, &[&before, &query.limit]).await?,
            (Some(user), None) => client.query(&stmt, &[&before, &query.limit, &user]).await?,
            (None, Some(kind)) => client.query(&stmt, &[&before, &query.limit, &kind]).await?,
            (Some(user), Some(kind)) => {
                client
                    .query(&stmt, &[&before, &query.limit, &user, &kind])
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                let Json(detail): Json<serde_json::Value> = r.try_get(8)?;
                Ok(AuditEvent {
                    id: r.try_get(0)?,
                    at: rfc3339(r.try_get(1)?),
                    kind: r.try_get(2)?,
                    user_id: r.try_get(3)?,
                    actor_id: r.try_get(4)?,
                    ip: r.try_get(5)?,
                    user_agent: r.try_get(6)?,
                    request_id: r.try_get(7)?,
                    detail,
                })
            })
            .collect()
    }

    pub async fn purge_audit(&self, before: u64, batch: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                // Replicas purging at once take different rows, not the same ones in turn.
                "DELETE FROM audit_events WHERE id IN
                 (SELECT id FROM audit_events WHERE at < $1 ORDER BY at LIMIT $2
                  FOR UPDATE SKIP LOCKED)",
            )
            .await?;
        Ok(client
            .execute(&stmt, &[&to_i64(before), &i64::from(batch)])
            .await?)
    }
}
