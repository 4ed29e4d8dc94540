//! Budgets: fleet-wide spending ledgers in Redis, in whole micro-USD so every replica adds up
//! the same. A tenant's ledger runs per UTC day, an agent's per UTC month; each key expires
//! after its period. The worker reserves a call's worst case before the call and settles to
//! its cost after; the dispatcher reads the ledgers to refuse a POST once a budget is spent
//! and to export spend.

use chrono::{DateTime, Datelike as _, NaiveDate, TimeZone as _, Utc};

use crate::config::Config;
use crate::naming::{Names, SpendOwner};
use crate::store::{Redis, StoreError};

/// Reserves `ARGV[1]` micro-USD if the ledger stays within `ARGV[2]` (a non-positive amount
/// is a settlement and always applies). Answers `{1 or 0, spent after}`.
const RESERVE: &str = r"
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if amount > 0 and spent + amount > tonumber(ARGV[2]) then return {0, spent} end
spent = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, spent}
";

/// A ledger's period: which key holds it and when it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// The period's label in its key, and the instant the next period starts.
    pub fn at(self, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        let date = now.date_naive();
        match self {
            Self::Day => {
                let next = date.succ_opt().unwrap_or(date);
                (date.format("%Y-%m-%d").to_string(), midnight(next))
            }
            Self::Month => {
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                let next = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(date);
                (date.format("%Y-%m").to_string(), midnight(next))
            }
        }
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// USD to whole micro-USD, rounded up (a reservation never comes out short).
pub fn micros(usd: f64) -> i64 {
    let m = (usd * 1_000_000.0).ceil();
    if m.is_finite() {
        m.clamp(i64::MIN as f64, i64::MAX as f64) as i64
    } else {
        0
    }
}

/// One budget: whose, how much per period.
#[derive(Debug, Clone)]
pub struct Budget {
    pub owner: Owner,
    pub period: Period,
    pub limit_usd: f64,
}

/// The owner of a budget, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Tenant(String),
    Agent(String),
}

impl Budget {
    /// The tenant's daily budget, if it has one.
    pub fn tenant_daily(config: &Config, tenant: &str) -> Option<Self> {
        let budget = config.tenants.iter().find(|t| t.id == tenant)?.budget?;
        Some(Self {
            owner: Owner::Tenant(tenant.to_owned()),
            period: Period::Day,
            limit_usd: budget.daily_usd,
        })
    }

    /// The agent's monthly budget, if it has one.
    pub fn agent_monthly(config: &Config, agent: &str) -> Option<Self> {
        Some(Self {
            owner: Owner::Agent(agent.to_owned()),
            period: Period::Month,
            limit_usd: config.agents.get(agent)?.monthly_budget_usd?,
        })
    }

    /// Every budget a model call of `tenant`'s job on `agent` draws on.
    pub fn for_call(config: &Config, tenant: &str, agent: &str) -> Vec<Self> {
        Self::tenant_daily(config, tenant)
            .into_iter()
            .chain(Self::agent_monthly(config, agent))
            .collect()
    }

    /// The ledger key for the period holding `now`, and when that period ends.
    pub fn ledger(&self, names: &Names, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        let (label, resets_at) = self.period.at(now);
        let owner = match &self.owner {
            Owner::Tenant(t) => SpendOwner::Tenant(t),
            Owner::Agent(a) => SpendOwner::Agent(a),
        };
        (names.spend_key(owner, &label), resets_at)
    }
}

/// A reservation held on some ledgers, to settle once the call's cost is known.
#[derive(Debug, Default)]
pub struct Reservation {
    /// Ledger key, amount held, and when the key's period ends.
    held: Vec<(String, i64, DateTime<Utc>)>,
}

/// Why a reservation was refused: the budget, and when its period resets.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub budget: Budget,
    pub resets_at: DateTime<Utc>,
}

/// Runs ledger operations against Redis.
#[derive(Clone)]
pub struct Ledgers {
    script: std::sync::Arc<redis::Script>,
    redis: Redis,
    names: Names,
}

impl Ledgers {
    pub fn new(redis: Redis, names: Names) -> Self {
        Self {
            script: std::sync::Arc::new(redis::Script::new(RESERVE)),
            redis,
            names,
        }
    }

    /// Reserves `usd` on every one of `budgets`, all or none.
    pub async fn reserve(
        &self,
        budgets: &[Budget],
        usd: f64,
    ) -> Result<Result<Reservation, Exhausted>, StoreError> {
        let amount = micros(usd);
        let mut reservation = Reservation::default();
        if amount <= 0 {
            return Ok(Ok(reservation));
        }
        let now = Utc::now();
        for budget in budgets {
            let (key, resets_at) = budget.ledger(&self.names, now);
            let answer = self.apply(&key, amount, budget.limit_usd, resets_at).await;
            match answer {
                Ok((true, _)) => reservation.held.push((key, amount, resets_at)),
                Ok((false, _)) => {
                    self.settle(reservation, 0.0).await;
                    return Ok(Err(Exhausted {
                        budget: budget.clone(),
                        resets_at,
                    }));
                }
                Err(err) => {
                    self.settle(reservation, 0.0).await;
                    return Err(err);
                }
            }
        }
        Ok(Ok(reservation))
    }

    /// Settles a reservation to what the call cost (zero for a call that failed or was not
    /// made). A ledger that cannot be reached keeps the reservation: over-counting, never
    /// under.
    pub async fn settle(&self, reservation: Reservation, cost_usd: f64) {
        let cost = micros(cost_usd);
        for (key, reserved, resets_at) in reservation.held {
            let delta = cost - reserved;
            if delta == 0 {
                continue;
            }
            // A settlement needs no room: no limit applies to it.
            let result = self.apply(&key, delta, f64::MAX, resets_at).await;
            if let Err(err) = result {
                tracing::warn!(error = %err, "could not settle a budget reservation");
            }
        }
    }

    /// What the ledgers of `budgets` hold for the period containing now (USD).
    pub async fn spent(&self, budgets: &[Budget]) -> Result<Vec<f64>, StoreError> {
        let now = Utc::now();
        let mut pipe = redis::pipe();
        for budget in budgets {
            pipe.cmd("GET").arg(budget.ledger(&self.names, now).0);
        }
        let raw: Vec<Option<i64>> = self.redis.pipe(&pipe).await?;
        Ok(raw
            .into_iter()
            .map(|m| m.unwrap_or(0) as f64 / 1_000_000.0)
            .collect())
    }

    async fn apply(
        &self,
        key: &str,
        amount: i64,
        limit_usd: f64,
        resets_at: DateTime<Utc>,
    ) -> Result<(bool, i64), StoreError> {
        // Kept a day past its period, for whoever reads yesterday's spend.
        let ttl = (resets_at - Utc::now()).num_seconds().max(1) + 86_400;
        let mut invocation = self.script.key(key);
        invocation.arg(amount).arg(micros(limit_usd)).arg(ttl);
        let (applied, spent): (i64, i64) = self.redis.script(&invocation).await?;
        Ok((applied == 1, spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_label_their_keys_and_know_when_they_reset() {
        let at = |y, mo, d, h, mi| {
            Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
                .single()
                .expect("valid")
        };
        let now = at(2026, 12, 31, 23, 59);
        let (day, next_day) = Period::Day.at(now);
        assert_eq!(day, "2026-12-31");
        assert_eq!(next_day, at(2027, 1, 1, 0, 0));
        let (month, next_month) = Period::Month.at(now);
        assert_eq!(month, "2026-12");
        assert_eq!(next_month, next_day);
    }

    #[test]
    fn micros_round_up_and_survive_garbage() {
        assert_eq!(micros(0.000_000_1), 1);
        assert_eq!(micros(1.5), 1_500_000);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(micros(-0.25), -250_000);
    }
}
