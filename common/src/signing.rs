//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>`
//! keyed with the base64-decoded part of a `whsec_…` secret. The verifier here is used by the
//! stub receiver and by tests; an independent Standard Webhooks library verifies too.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";

/// A tenant's signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Every secret a tenant's webhooks are signed with: one, or during a rotation several, each
/// signing every delivery (`webhook-signature: v1,<new> v1,<old>`), so a receiver verifies with
/// whichever it holds. Configured as one environment variable holding the secrets separated by
/// spaces; rotating is: add the new one, move the receiver, drop the old.
#[derive(Clone, Debug)]
pub struct SigningKeys {
    secrets: Vec<WebhookSecret>,
}

/// At most this many secrets sign at once: a rotation needs two, a slow one three.
pub const MAX_SIGNING_SECRETS: usize = 4;

impl SigningKeys {
    /// Parses `whsec_…` secrets separated by whitespace (at least one, at most
    /// [`MAX_SIGNING_SECRETS`]).
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let secrets = raw
            .split_whitespace()
            .map(WebhookSecret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        match secrets.len() {
            0 => Err(SecretError::MissingPrefix),
            n if n > MAX_SIGNING_SECRETS => Err(SecretError::TooMany),
            _ => Ok(Self { secrets }),
        }
    }

    /// The `webhook-signature` header: one `v1,` signature per secret, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let signatures: Vec<String> = self
            .secrets
            .iter()
            .map(|secret| secret.sign(id, timestamp, body))
            .collect();
        signatures.join(" ")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("webhook secret must start with `whsec_`")]
    MissingPrefix,
    #[error("webhook secret is not valid base64 after `whsec_`")]
    NotBase64,
    #[error("webhook secret must decode to 24..=64 bytes")]
    BadLength,
    #[error("at most {MAX_SIGNING_SECRETS} webhook secrets may sign at once")]
    TooMany,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance window")]
    Stale,
    #[error("no v1 signature matches")]
    NoMatch,
}

impl WebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let encoded = raw
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::BadLength);
        }
        Ok(Self { key })
    }

    /// A fresh random secret in `whsec_` form (for tooling and tests).
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC; the error arm is unreachable.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The value of the `webhook-signature` header.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Verifies a delivery the way a receiver must: timestamp within `tolerance_secs` of
    /// `now`, and at least one `v1` signature equal in constant time (length checked).
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        if (now - ts).abs() > tolerance_secs {
            return Err(VerifyError::Stale);
        }
        for candidate in signature_header.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            // verify_slice compares in constant time and rejects a tag of the wrong length.
            if self.mac(id, ts, body).verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_specification_example() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("secret");
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn verifies_and_rejects_tampering() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("secret");
        let ts = SPEC_TS.to_string();
        assert_eq!(
            secret.verify(
                SPEC_ID,
                &ts,
                &format!("v0,xx {SPEC_SIG}"),
                SPEC_BODY,
                SPEC_TS,
                300
            ),
            Ok(())
        );
        assert_eq!(
            secret.verify(SPEC_ID, &ts, SPEC_SIG, b"{}", SPEC_TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            secret.verify(SPEC_ID, &ts, "v1,AAAA", SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            secret.verify(SPEC_ID, &ts, SPEC_SIG, SPEC_BODY, SPEC_TS + 301, 300),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            secret.verify(SPEC_ID, "x", SPEC_SIG, SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn during_a_rotation_every_secret_signs_and_either_verifies() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let keys = SigningKeys::parse(&format!(" {new}  {old} ")).expect("two secrets");
        let header = keys.sign(SPEC_ID, SPEC_TS, SPEC_BODY);
        assert_eq!(header.split(' ').count(), 2, "{header}");
        let ts = SPEC_TS.to_string();
        for secret in [&old, &new] {
            let secret = WebhookSecret::parse(secret).expect("secret");
            let verify = |id: &str, ts: &str, body: &[u8]| {
                secret.verify(id, ts, &header, body, SPEC_TS, 300)
            };
            assert_eq!(verify(SPEC_ID, &ts, SPEC_BODY), Ok(()));
            assert_eq!(
                verify("msg_other", &ts, SPEC_BODY),
                Err(VerifyError::NoMatch)
            );
            assert_eq!(
                verify(SPEC_ID, &(SPEC_TS + 1).to_string(), SPEC_BODY),
                Err(VerifyError::NoMatch)
            );
            assert_eq!(verify(SPEC_ID, &ts, b"{}"), Err(VerifyError::NoMatch));
        }
        let stranger = WebhookSecret::parse(&WebhookSecret::generate()).expect("secret");
        assert_eq!(
            stranger.verify(SPEC_ID, &ts, &header, SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            SigningKeys::parse("  ").err(),
            Some(SecretError::MissingPrefix)
        );
        let five = vec![WebhookSecret::generate(); 5].join(" ");
        assert_eq!(SigningKeys::parse(&five).err(), Some(SecretError::TooMany));
        assert!(!format!("{keys:?}").contains(&new[6..12]));
    }

    #[test]
    fn parses_only_whsec_secrets() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(),
            Some(SecretError::MissingPrefix)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!").err(),
            Some(SecretError::NotBase64)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_AAAA").err(),
            Some(SecretError::BadLength)
        );
        assert!(WebhookSecret::parse(&WebhookSecret::generate()).is_ok());
        let dbg = format!("{:?}", WebhookSecret::parse(SPEC_SECRET).expect("secret"));
        assert!(!dbg.contains("MfKQ"));
    }
}
