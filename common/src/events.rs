//! A job's terminal event: the message that delivers it, and handing it to the webhook queue
//! once — from the dispatcher for a cancellation, or from a worker that found the job ended
//! without a hand-off (a redelivery after a crash). The run that ends a job makes the first
//! attempt itself (`worker::webhook::first_attempt`).

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
    let Some(msg) = event_message(record, spec) else {
        return Ok(());
    };
    if store.handed_off(record.id).await? {
        return Ok(());
    }
    broker.publish_webhook(&msg).await?;
    if let Err(err) = store.mark_handed_off(record.id).await {
        tracing::warn!(error = %err, "cannot note the webhook hand-off");
    }
    Ok(())
}

/// The event to deliver for this job: only a terminal job with a webhook URL has one.
fn event_of(record: &JobRecord, spec: &JobSpec) -> Option<EventType> {
    EventType::for_status(record.status).filter(|_| spec.webhook_url.is_some())
}

/// The first delivery of the job's terminal event, if it has one.
pub fn event_message(record: &JobRecord, spec: &JobSpec) -> Option<WebhookMessage> {
    Some(WebhookMessage {
        v: SCHEMA_VERSION,
        job_id: record.id,
        tenant: record.tenant.clone(),
        event: event_of(record, spec)?,
        attempt: 0,
        not_before: None,
    })
}
