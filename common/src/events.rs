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
    if event_of(record, spec).is_none() || store.handed_off(record.id).await? {
        return Ok(());
    }
    publish_event(broker, record, spec).await?;
    if let Err(err) = store.mark_handed_off(record.id).await {
        tracing::warn!(error = %err, "cannot note the webhook hand-off");
    }
    Ok(())
}

/// The event to deliver for this job: only a terminal job with a webhook URL has one.
fn event_of(record: &JobRecord, spec: &JobSpec) -> Option<EventType> {
    EventType::for_status(record.status).filter(|_| spec.webhook_url.is_some())
}

/// Publishes the terminal event of a job that the caller has just ended itself (so it cannot
/// have been handed off before), without noting the hand-off: the caller notes it in its own
/// closing write. Answers whether there was an event to publish.
pub async fn publish_event(
    broker: &Broker,
    record: &JobRecord,
    spec: &JobSpec,
) -> Result<bool, BrokerError> {
    let Some(event) = event_of(record, spec) else {
        return Ok(false);
    };
    let msg = WebhookMessage {
        v: SCHEMA_VERSION,
        job_id: record.id,
        tenant: record.tenant.clone(),
        event,
        attempt: 0,
        not_before: None,
    };
    broker.publish_webhook(&msg).await?;
    Ok(true)
}
