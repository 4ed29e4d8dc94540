//! A submission retried with its Idempotency-Key as a client should — through 503s, answers
//! lost on the way, 429s and the 409 of a retry racing its first try — until it is accepted.
//! The chaos tests (a worker, a broker node, a Redis master killed mid-run) all submit this
//! way and differ only in what they note of each answer.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use crate::{TenantKeys, TestApp};

/// One submission to retry.
pub struct Resubmit<'a> {
    /// The dispatcher's `/v1/jobs`.
    pub url: String,
    pub tenant: &'a TenantKeys,
    pub body: Value,
    pub key: String,
    /// How long to keep trying.
    pub within: Duration,
    /// 409s for this long in a row mean the key is stuck: its claim names a job that was
    /// never stored (see `docs/REDIS-CLUSTER.md`). `None`: keep trying.
    pub stuck_after: Option<Duration>,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Accepted(String),
    /// Its Idempotency-Key kept answering 409 for `stuck_after`. Not an accepted job.
    StuckKey,
}

/// Many submissions' ends: the accepted jobs' ids, in order, and how many keys got stuck.
#[derive(Debug, Default)]
pub struct Tally {
    pub accepted: Vec<String>,
    pub stuck_keys: usize,
}

impl FromIterator<Submitted> for Tally {
    fn from_iter<I: IntoIterator<Item = Submitted>>(ends: I) -> Self {
        let mut tally = Tally::default();
        for end in ends {
            match end {
                Submitted::Accepted(id) => tally.accepted.push(id),
                Submitted::StuckKey => tally.stuck_keys += 1,
            }
        }
        tally
    }
}

/// One answer on the way: when it was sent and answered, and its status (0: none came).
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub sent: Instant,
    pub answered: Instant,
    pub status: u16,
}

/// The pause between tries: pacing, not synchronisation.
const PACE: Duration = Duration::from_millis(100);

impl TestApp {
    /// POSTs `submission` until it is accepted (or its key is stuck), telling `noted` of
    /// every answer; an answer other than 200, 202, 409, 429 or 503 is an error, and so is
    /// running out of `within`.
    pub async fn resubmit(
        &self,
        submission: Resubmit<'_>,
        mut noted: impl FnMut(Answered),
    ) -> anyhow::Result<Submitted> {
        let deadline = Instant::now() + submission.within;
        let mut conflicts_since: Option<Instant> = None;
        // Every status, run-length encoded, for the error that says it was never accepted.
        let mut statuses: Vec<(u16, usize)> = Vec::new();
        let mut last_refusal = String::new();
        while Instant::now() < deadline {
            let sent = Instant::now();
            let response = self
                .http
                .post(&submission.url)
                .bearer_auth(&submission.tenant.api_key)
                .header("idempotency-key", &submission.key)
                .json(&submission.body)
                .send()
                .await;
            let status = response.as_ref().map_or(0, |r| r.status().as_u16());
            match statuses.last_mut() {
                Some((last, count)) if *last == status => *count += 1,
                _ => statuses.push((status, 1)),
            }
            noted(Answered {
                sent,
                answered: Instant::now(),
                status,
            });
            match (status, response) {
                (200 | 202, Ok(response)) => {
                    let body: Value = response.json().await?;
                    let Some(id) = body["id"].as_str() else {
                        bail!("{}: no id in {body}", submission.key);
                    };
                    return Ok(Submitted::Accepted(id.to_owned()));
                }
                (409, _) => {
                    let since = *conflicts_since.get_or_insert(sent);
                    if submission
                        .stuck_after
                        .is_some_and(|after| since.elapsed() > after)
                    {
                        return Ok(Submitted::StuckKey);
                    }
                }
                (429 | 503, Ok(response)) => {
                    last_refusal = response.text().await.unwrap_or_default();
                }
                (0 | 429 | 503, _) => {}
                (other, response) => {
                    let body = match response {
                        Ok(response) => response.text().await.unwrap_or_default(),
                        Err(err) => err.to_string(),
                    };
                    bail!("{}: unexpected {other}: {body}", submission.key);
                }
            }
            if status != 409 {
                conflicts_since = None;
            }
            tokio::time::sleep(PACE).await;
        }
        let answers: Vec<String> = statuses
            .iter()
            .map(|(status, count)| format!("{status} ×{count}"))
            .collect();
        bail!(
            "{} was not accepted within {:?}; answers: {}; the last refusal: {last_refusal}",
            submission.key,
            submission.within,
            answers.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_keeps_the_accepted_ids_in_order_and_counts_stuck_keys() {
        let ends = [
            Submitted::Accepted("a".into()),
            Submitted::StuckKey,
            Submitted::Accepted("b".into()),
        ];
        let tally: Tally = ends.into_iter().collect();
        assert_eq!(tally.accepted, ["a", "b"]);
        assert_eq!(tally.stuck_keys, 1);
    }
}
