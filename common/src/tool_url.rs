//! URL templates of HTTP tools. The operator writes the URL; a model's arguments may fill
//! `{placeholders}` in path segments and query values only, percent-encoded, so scheme, host
//! and port always come from the configuration: a prompt-injected argument cannot aim a tool
//! at another host, climb the path (`..`), or add a query key of its own.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("not an http(s) URL: {0}")]
    NotHttp(String),
    #[error("placeholders may stand only in the path and in query values, not in {0}")]
    Misplaced(&'static str),
    #[error("placeholder `{{{0}}}` is not a name of letters, digits and '_'")]
    BadName(String),
    #[error("unbalanced `{{` or `}}`")]
    Unbalanced,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("argument `{0}` is missing")]
    Missing(String),
    #[error("argument `{0}` must be a string, number or boolean to go into the URL")]
    NotScalar(String),
    #[error("argument `{0}` may not be empty, `.` or `..` in a URL path")]
    DotSegment(String),
    #[error("the rendered URL is invalid: {0}")]
    Invalid(String),
}

/// A parsed template: `http://host:port/path/{id}?q={query}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// Scheme, host and port, e.g. `http://tools.internal:9100`: never from arguments.
    origin: String,
    path: Vec<Piece>,
    query: Vec<Piece>,
    placeholders: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Arg(String),
}

impl UrlTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let (scheme, rest) = template
            .split_once("://")
            .ok_or_else(|| TemplateError::NotHttp(template.to_owned()))?;
        if !matches!(scheme, "http" | "https") {
            return Err(TemplateError::NotHttp(template.to_owned()));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains(['{', '}']) {
            return Err(TemplateError::Misplaced("the host or port"));
        }
        if tail.contains('#') {
            return Err(TemplateError::NotHttp("a tool URL has no fragment".into()));
        }
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let path = pieces(path)?;
        let query = pieces(query)?;
        check_query_keys(&query)?;
        let origin = format!("{scheme}://{authority}");
        // The template with every placeholder filled must be a valid URL on that origin.
        let probe = Url::parse(&format!("{origin}{}", sample(&path, &query)))
            .map_err(|e| TemplateError::NotHttp(e.to_string()))?;
        if probe.host_str().is_none_or(str::is_empty) {
            return Err(TemplateError::NotHttp(template.to_owned()));
        }
        let placeholders = path
            .iter()
            .chain(&query)
            .filter_map(|p| match p {
                Piece::Arg(name) => Some(name.clone()),
                Piece::Text(_) => None,
            })
            .collect();
        Ok(Self {
            origin,
            path,
            query,
            placeholders,
        })
    }

    /// The argument names the template uses.
    pub fn placeholders(&self) -> &BTreeSet<String> {
        &self.placeholders
    }

    /// Fills the placeholders from `args` (percent-encoded); the origin cannot change.
    pub fn render(&self, args: &Map<String, Value>) -> Result<Url, RenderError> {
        let mut out = self.origin.clone();
        for piece in &self.path {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Arg(name) => {
                    let value = scalar(args, name)?;
                    if matches!(value.as_str(), "" | "." | "..") {
                        return Err(RenderError::DotSegment(name.clone()));
                    }
                    encode_into(&mut out, &value);
                }
            }
        }
        if !self.query.is_empty() {
            out.push('?');
            for piece in &self.query {
                match piece {
                    Piece::Text(text) => out.push_str(text),
                    Piece::Arg(name) => encode_into(&mut out, &scalar(args, name)?),
                }
            }
        }
        let url = Url::parse(&out).map_err(|e| RenderError::Invalid(e.to_string()))?;
        // Belt and braces: whatever the arguments were, the origin is the operator's.
        if url.origin().ascii_serialization() != self.origin_url_origin() {
            return Err(RenderError::Invalid("origin changed".into()));
        }
        Ok(url)
    }

    fn origin_url_origin(&self) -> String {
        Url::parse(&self.origin)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }
}

fn pieces(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        if before.contains('}') {
            return Err(TemplateError::Unbalanced);
        }
        let close = after.find('}').ok_or(TemplateError::Unbalanced)?;
        let name = &after[1..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(TemplateError::BadName(name.to_owned()));
        }
        if !before.is_empty() {
            out.push(Piece::Text(before.to_owned()));
        }
        out.push(Piece::Arg(name.to_owned()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(TemplateError::Unbalanced);
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    Ok(out)
}

/// A placeholder in the query must be a whole value: right after `=`, up to the next `&`.
fn check_query_keys(query: &[Piece]) -> Result<(), TemplateError> {
    for (i, piece) in query.iter().enumerate() {
        if let Piece::Arg(_) = piece {
            let after_equals = match i.checked_sub(1).and_then(|j| query.get(j)) {
                Some(Piece::Text(text)) => text.ends_with('='),
                _ => false,
            };
            let ends_value = match query.get(i + 1) {
                None => true,
                Some(Piece::Text(text)) => text.starts_with('&'),
                Some(Piece::Arg(_)) => false,
            };
            if !after_equals || !ends_value {
                return Err(TemplateError::Misplaced("a query key"));
            }
        }
    }
    Ok(())
}

fn sample(path: &[Piece], query: &[Piece]) -> String {
    let join = |pieces: &[Piece]| -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Arg(_) => "x",
            })
            .collect()
    };
    let query = join(query);
    if query.is_empty() {
        join(path)
    } else {
        format!("{}?{query}", join(path))
    }
}

fn scalar(args: &Map<String, Value>, name: &str) -> Result<String, RenderError> {
    match args.get(name) {
        None | Some(Value::Null) => Err(RenderError::Missing(name.to_owned())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(RenderError::NotScalar(name.to_owned())),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a value can never
/// end a segment (`/`), start a query (`?`), add a parameter (`&`, `=`) or a fragment (`#`).
fn encode_into(out: &mut String, value: &str) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn fills_path_segments_and_query_values() {
        let t = UrlTemplate::parse("http://127.0.0.1:9100/lookup/{id}?units={units}&v=1")
            .expect("template");
        let url = t
            .render(&args(json!({"id": "a b/c", "units": "m&x=1"})))
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9100/lookup/a%20b%2Fc?units=m%26x%3D1&v=1"
        );
        assert_eq!(t.placeholders().iter().collect::<Vec<_>>(), ["id", "units"]);
        let url = t
            .render(&args(json!({"id": 42, "units": true})))
            .expect("url");
        assert_eq!(url.path(), "/lookup/42");
    }

    #[test]
    fn arguments_cannot_move_the_call() {
        let t = UrlTemplate::parse("https://tools.example/v1/{id}").expect("template");
        for (bad, why) in [
            (json!({"id": ".."}), "dot"),
            (json!({"id": "."}), "dot"),
            (json!({"id": ""}), "empty"),
            (json!({}), "missing"),
            (json!({"id": {"x": 1}}), "object"),
        ] {
            assert!(t.render(&args(bad)).is_err(), "{why}");
        }
        let url = t
            .render(&args(json!({"id": "@evil.example:80/x?y#z"})))
            .expect("encoded");
        assert_eq!(url.host_str(), Some("tools.example"));
        assert_eq!(url.path(), "/v1/%40evil.example%3A80%2Fx%3Fy%23z");
        assert_eq!(url.query(), None);
    }

    #[test]
    fn placeholders_only_where_allowed() {
        for bad in [
            "http://{host}/x",
            "http://h:{port}/x",
            "ftp://h/{x}",
            "http://h/x?{key}=1",
            "http://h/x?k=a{v}",
            "http://h/x/{a b}",
            "http://h/x/{id",
            "http://h/x/id}",
            "http://h/x#{frag}",
            "h/x",
        ] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad} must be refused");
        }
        assert!(UrlTemplate::parse("http://h/files/{name}.txt?q={q}").is_ok());
    }
}
