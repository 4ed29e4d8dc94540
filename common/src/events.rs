//! Handing a job's terminal event to the webhook queue — once, from whichever process ended
//! the job (a worker, or the dispatcher for a cancellation) or found it ended without a
//! hand-off (a redelivery after a crash).

use crate::broker::{Broker, BrokerError};
use crate::store::{JobStore, StoreError};
use crate::wire::{EventType, JobRecord, JobSpec, WebhookMessage, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

/// Publishes the terminal event of `record` unless it has no webhook, is not terminal, or
/// was handed off already. At least once: a crash between the publish and the note means a
/// second hand-off, which the receiver sees as a duplicate with the same `webhook-id`.
pub async fn hand_off(
    store: &JobStore,
    broker: &Broker,
    record: &JobRecord,
    spec: &JobSpec,
) -> Result<(), HandoffError> {
    let Some(event) = EventType::for_status(record.status) else {
        return Ok(());
    };
    if spec.webhook_url.is_none() || store.handed_off(record.id).await? {
        return Ok(());
    }
    let msg = WebhookMessage {
        v: SCHEMA_VERSION,
        job_id: record.id,
        tenant: record.tenant.clone(),
        event,
        attempt: 0,
        not_before: None,
    };
    broker.publish_webhook(&msg).await?;
    if let Err(err) = store.mark_handed_off(record.id).await {
        tracing::warn!(error = %err, "cannot note the webhook hand-off");
    }
    Ok(())
}
