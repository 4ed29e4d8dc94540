//! Payload privacy (`privacy:`): whether prompts, outputs and tool arguments and results may
//! be logged, what is masked when they are, and whether results are masked too.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::privacy::{Builtin, Masker, Privacy};

use super::validation::{check_identifier, invalid};
use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Log payloads (the input, each model answer, each tool call's arguments and result,
    /// the text a provider's error quotes) at `info`, masked. Off by default: payloads then
    /// never reach a log line, masked or not.
    pub log_payloads: bool,
    /// The built-in patterns masked (in payload log lines, and in results with
    /// `mask_output`); all of them by default.
    pub mask: Vec<Builtin>,
    /// The operator's own patterns, masked as `[<name>]` after the built-in ones.
    pub patterns: Vec<PatternConfig>,
    /// Mask the same patterns in what runs give back: the job's output and error (as
    /// stored, so the API and the webhook carry them masked) and the steps in the webhook.
    /// An agent's own `mask_output` overrides it.
    pub mask_output: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            log_payloads: false,
            mask: Builtin::ALL.to_vec(),
            patterns: Vec::new(),
            mask_output: false,
        }
    }
}

/// An operator's pattern: a regular expression (Rust `regex` syntax) and the name its
/// matches are replaced by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub name: String,
    pub regex: String,
}

impl PrivacyConfig {
    /// The masker of these patterns; a pattern that does not compile, matches the empty
    /// string, or has a name that is not unique is an error naming it.
    pub(super) fn masker(&self, at: &str) -> Result<Masker, ConfigError> {
        let mut masker = Masker::new(&self.mask);
        for (i, pattern) in self.patterns.iter().enumerate() {
            let key = format!("{at}.patterns[{i}]");
            let name = &pattern.name;
            check_identifier(&format!("{key}.name"), name)?;
            let taken = Builtin::ALL.iter().any(|b| b.as_str() == name)
                || self.patterns[..i].iter().any(|p| &p.name == name);
            if taken {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("`{name}` is already a pattern's name"),
                ));
            }
            masker = masker
                .with_pattern(name, &pattern.regex)
                .map_err(|e| invalid(format!("{key}.regex"), format!("pattern `{name}`: {e}")))?;
        }
        Ok(masker)
    }
}

impl Config {
    /// What a process needs to keep payloads private (see [`crate::privacy`]): built at
    /// start and at every reload from the validated `privacy:` and agents' `mask_output`.
    pub fn privacy(&self) -> Result<Privacy, ConfigError> {
        let masker = self.privacy.masker("privacy")?;
        let agents: BTreeMap<String, bool> = self
            .agents
            .iter()
            .filter_map(|(name, agent)| Some((name.clone(), agent.mask_output?)))
            .collect();
        Ok(Privacy::new(
            self.privacy.log_payloads,
            self.privacy.mask_output,
            agents,
            masker,
        ))
    }
}
