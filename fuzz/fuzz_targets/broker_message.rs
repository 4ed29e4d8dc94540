//! Broker message bodies: a job on an agent's queue, a batch of jobs, a webhook delivery
//! token, a control broadcast. Any body at all may arrive (another version, another publisher, a person with the
//! management UI), and whatever decodes must survive being published again: retries and delays
//! re-encode the message they got.
#![no_main]

use libfuzzer_sys::fuzz_target;

use agentfleet_common::wire::{ControlMessage, JobBatch, JobMessage, Versioned, WebhookMessage};

fn round_trip<M: Versioned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(message) = M::decode(body) {
        let again = M::decode(&message.encode());
        assert_eq!(
            again.ok().as_ref(),
            Some(&message),
            "re-encoded message decodes the same"
        );
    }
}

/// A batch that passes its checks (one queue, 1 to 64 jobs) passes them again once
/// re-encoded: a worker that splits one publishes its jobs again.
fn batch_round_trip(body: &[u8]) {
    if let Ok(batch) = JobBatch::decode(body) {
        assert!(!batch.jobs.is_empty() && batch.jobs.len() <= JobBatch::MAX_JOBS);
        let again = JobBatch::decode(&batch.encode());
        assert_eq!(
            again.ok().as_ref(),
            Some(&batch),
            "re-encoded batch decodes the same"
        );
    }
}

fuzz_target!(|body: &[u8]| {
    round_trip::<JobMessage>(body);
    batch_round_trip(body);
    round_trip::<WebhookMessage>(body);
    round_trip::<ControlMessage>(body);
});
