//! Webhook delivery, from its own durable queue with its own slots, so a slow receiver never
//! occupies an agent's concurrency. Each delivery is signed per Standard Webhooks with the
//! tenant's secret; the `webhook-id` is derived from the job and event, so it is the same on
//! every retry and every replica. Failures are retried on the configured schedule through the
//! delay ladder; 410 Gone stops retries.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;
use url::Url;

use agentfleet_common::outbound::{Destination, OutboundError};
use agentfleet_common::signing;
use agentfleet_common::store::Loaded;
use agentfleet_common::wire::{
    Versioned, WebhookEvent, WebhookMessage, WebhookOutcome, WebhookStatus,
};

use crate::delivery::{after_delayed_publish, remaining_delay, settle, undecodable, Disposition};
use crate::Shared;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered(u16),
    Gone,
    Failed(Option<u16>),
    Blocked,
}

pub async fn handle_webhook(shared: Arc<Shared>, delivery: Delivery, _slot: OwnedSemaphorePermit) {
    let disposition = match WebhookMessage::decode(&delivery.data) {
        Ok(msg) => {
            let span = tracing::info_span!(
                "webhook",
                job_id = %msg.job_id,
                tenant = %msg.tenant,
                event = msg.event.as_str(),
                attempt = msg.attempt.saturating_add(1)
            );
            deliver(&shared, msg).instrument(span).await
        }
        Err(err) => undecodable(&shared, "webhooks", &err),
    };
    settle(&shared, delivery, disposition).await;
}

async fn deliver(shared: &Shared, msg: WebhookMessage) -> Disposition {
    if let Some(remaining) = remaining_delay(msg.not_before, Utc::now()) {
        let published = shared.broker.publish_webhook_delayed(&msg, remaining).await;
        return after_delayed_publish(published, "an early webhook");
    }
    let (record, spec, steps) = match shared.store.load_for_run(msg.job_id).await {
        Ok(Loaded::Ready {
            record,
            spec,
            steps,
        }) => (record, spec, steps),
        Ok(Loaded::Concluded(_)) => {
            // A second hand-off of the same event (at least once): its delivery is over.
            tracing::debug!("the job's event was delivered already; duplicate dropped");
            return Disposition::Ack;
        }
        Ok(Loaded::Gone) => {
            tracing::warn!("job is gone; dropping its webhook");
            return Disposition::Ack;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot load the job for its webhook");
            return Disposition::Requeue;
        }
    };
    let Some(url) = spec.webhook_url.as_deref().and_then(|u| Url::parse(u).ok()) else {
        return Disposition::Ack;
    };
    if let Some(wait) = over_host_rate(shared, &url) {
        // Same attempt, later: a throttled delivery is not a failed one.
        shared
            .metrics
            .webhook_deliveries
            .with_label_values(&["throttled"])
            .inc();
        let later = WebhookMessage {
            not_before: chrono::Duration::from_std(wait)
                .ok()
                .map(|d| Utc::now() + d),
            ..msg
        };
        let published = shared.broker.publish_webhook_delayed(&later, wait).await;
        return after_delayed_publish(published, "a throttled webhook");
    }
    let Some(secret) = shared.secrets.webhook.get(&msg.tenant) else {
        tracing::error!("tenant has no webhook secret configured; cannot sign, dropping");
        shared
            .metrics
            .webhook_deliveries
            .with_label_values(&["blocked"])
            .inc();
        return Disposition::Ack;
    };

    // The event is the record as it was when the job ended, with the run's steps: the
    // delivery bookkeeping is not part of it, and its timestamp is the end time, so every
    // retry sends the same body.
    let mut data = record.clone();
    data.webhook = None;
    data.steps = Some(steps);
    let privacy = shared.privacy.get();
    if privacy.masks_output(&data.agent) {
        // The record was stored masked; its steps were not (they are the run's own state).
        privacy.masker().mask_result(&mut data);
    }
    let event = WebhookEvent {
        event_type: msg.event,
        timestamp: record.finished_at.unwrap_or_else(Utc::now),
        data,
    };
    let Ok(body) = serde_json::to_vec(&event) else {
        return Disposition::DeadLetter;
    };
    let id = event.id();
    let timestamp = Utc::now().timestamp();
    let signature = secret.sign(&id, timestamp, &body);
    let timestamp = timestamp.to_string();
    let headers = [
        (signing::HEADER_ID, id.as_str()),
        (signing::HEADER_TIMESTAMP, timestamp.as_str()),
        (signing::HEADER_SIGNATURE, signature.as_str()),
    ];
    let timeout = shared.config.webhooks.timeout;
    let result = shared
        .outbound
        .post_json(Destination::Webhook, &url, &headers, body, timeout)
        .await;
    let outcome = match &result {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered(r.status),
        Ok(r) if r.status == 410 => Outcome::Gone,
        Ok(r) => Outcome::Failed(Some(r.status)),
        Err(OutboundError::Blocked(_)) => Outcome::Blocked,
        Err(_) => Outcome::Failed(None),
    };
    if let Err(err) = &result {
        tracing::info!(error = %err, "webhook attempt failed");
    }

    let schedule = &shared.config.webhooks.retry_schedule;
    let retry_delay = match outcome {
        Outcome::Failed(_) => schedule
            .get(msg.attempt as usize)
            .map(|&delay| jitter(delay)),
        _ => None,
    };
    let (label, ended) = conclude(outcome, retry_delay.is_some());
    shared
        .metrics
        .webhook_deliveries
        .with_label_values(&[label])
        .inc();
    tracing::info!(outcome = label, "webhook attempt done");

    if let Err(err) = record_attempt(shared, record, &msg, (outcome, ended)).await {
        // Bookkeeping only: the delivery itself stands; do not send it again for this.
        tracing::warn!(error = %err, "cannot record the webhook attempt");
    }
    if let Some(delay) = retry_delay {
        let retry = WebhookMessage {
            attempt: msg.attempt.saturating_add(1),
            not_before: chrono::Duration::from_std(delay)
                .ok()
                .map(|d| Utc::now() + d),
            ..msg
        };
        let published = shared.broker.publish_webhook_delayed(&retry, delay).await;
        return after_delayed_publish(published, "the webhook retry");
    }
    Disposition::Ack
}

/// How long a delivery to `url`'s host must wait under `webhooks.per_host_rate`, if at all.
fn over_host_rate(shared: &Shared, url: &Url) -> Option<Duration> {
    let limiters = shared.webhook_hosts.get();
    let limiter = limiters.as_ref().as_ref()?;
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    limiter.check(&host).err()
}

/// The attempt's metric label, and how the delivery ended if it has.
fn conclude(outcome: Outcome, retrying: bool) -> (&'static str, Option<WebhookOutcome>) {
    match (outcome, retrying) {
        (Outcome::Delivered(_), _) => ("delivered", Some(WebhookOutcome::Delivered)),
        (Outcome::Gone, _) => ("gone", Some(WebhookOutcome::Gone)),
        (Outcome::Blocked, _) => ("blocked", Some(WebhookOutcome::WebhookBlocked)),
        (Outcome::Failed(_), true) => ("retry", None),
        (Outcome::Failed(_), false) => ("exhausted", Some(WebhookOutcome::Exhausted)),
    }
}

/// ±10% so a burst of failures does not come back as a burst of retries.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// Notes the attempt on the record loaded for it: a terminal record changes only by this
/// bookkeeping, so there is nothing newer to read back first (two deliveries of the same
/// event racing can only leave the lower attempt count, which the next attempt corrects).
async fn record_attempt(
    shared: &Shared,
    mut record: agentfleet_common::wire::JobRecord,
    msg: &WebhookMessage,
    (outcome, ended): (Outcome, Option<WebhookOutcome>),
) -> Result<(), agentfleet_common::store::StoreError> {
    let status = record.webhook.get_or_insert_with(WebhookStatus::default);
    status.outcome = ended;
    status.attempts = status.attempts.max(msg.attempt.saturating_add(1));
    status.last_status = match outcome {
        Outcome::Delivered(code) | Outcome::Failed(Some(code)) => Some(code),
        Outcome::Gone => Some(410),
        Outcome::Failed(None) | Outcome::Blocked => None,
    };
    if matches!(outcome, Outcome::Delivered(_)) {
        status.delivered_at.get_or_insert_with(Utc::now);
    }
    shared.store.save_bookkeeping(&record).await.map(|_| ())
}
