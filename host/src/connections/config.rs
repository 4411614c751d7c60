//! A connection's configuration: what `POST /v1/connections` accepts, and its compiled form.
//!
//! The configuration is stored as submitted (after validation) in `connection_versions`; it
//! names secrets and never holds their values. [`Route`] templates and [`Selector`]s are
//! compiled once per version and cached with the version's HTTP client.

use super::locations::{Place, Selector};
use crate::vault::Redaction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `outbound` (backend → vault → third party) or `inbound` (client → vault → upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Outbound,
    Inbound,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Outbound => "outbound",
            Kind::Inbound => "inbound",
        }
    }
}

/// The body of `POST /v1/connections` and `PUT /v1/connections/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: String,
    pub kind: Kind,
    /// Outbound: the third party's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Inbound: where tokenized requests go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The vault detokenize rules search when they do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// Headers added to every forwarded request; values may use `{{secret.<name>}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The largest request or reply body the connection carries.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Inbound: the secret whose HMAC of the body signs forwarded requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// Inbound: calls per minute per client address on public routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    pub routes: Vec<Route>,
}

pub const DEFAULT_MAX_BODY: usize = 8 << 20;
const MAX_MAX_BODY: usize = 32 << 20;

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

fn default_connect_ms() -> u64 {
    2_000
}

fn default_total_ms() -> u64 {
    10_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            total_ms: default_total_ms(),
        }
    }
}

/// TLS beyond the system's roots: a private CA, a client certificate (its key is a secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// An HTTP method, or `*` for any.
    pub method: String,
    /// `/v1/customers/{id}`; a last segment `{*rest}` matches the remainder.
    pub path: String,
    /// Inbound: callable without the connection's key (then rate-limited).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    #[serde(default)]
    pub request: RequestRules,
    #[serde(default)]
    pub response: ResponseRules,
}

impl Route {
    /// Every tokenize rule of this route (request and response), with the field path that
    /// names it in errors, for route number `i`.
    pub fn tokenize_rules(&self, i: usize) -> impl Iterator<Item = (String, &TokenizeRule)> {
        let at = move |hook: &'static str| {
            move |(j, t)| (format!("routes[{i}].{hook}.tokenize[{j}]"), t)
        };
        self.request
            .tokenize
            .iter()
            .enumerate()
            .map(at("request"))
            .chain(
                self.response
                    .tokenize
                    .iter()
                    .enumerate()
                    .map(at("response")),
            )
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRules {
    /// Outbound: tokens replaced by their values before forwarding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detokenize: Vec<DetokenizeRule>,
    /// Inbound: values replaced by tokens before forwarding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokenize: Vec<TokenizeRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokenize: Vec<TokenizeRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRule {
    pub location: Place,
    pub path: String,
    #[serde(default = "plain")]
    pub redaction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
}

fn plain() -> String {
    "plain".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRule {
    pub location: Place,
    pub path: String,
    pub vault: String,
    pub table: String,
    pub column: String,
}

/// One segment of a route's path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param,
    Rest,
}

/// Parses `/a/{id}/b` (segments of unreserved characters, `{name}`, a final `{*name}`).
pub fn parse_template(path: &str) -> Result<Vec<Segment>, &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with `/`");
    };
    if path.len() > 512 {
        return Err("is longer than 512 characters");
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let param = |p: &str| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}')) {
                return match (i == last, param(name)) {
                    (true, true) => Ok(Segment::Rest),
                    (false, _) => Err("may use `{*name}` only as its last segment"),
                    (_, false) => Err("has a parameter name that is not [A-Za-z0-9_]+"),
                };
            }
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                return if param(name) {
                    Ok(Segment::Param)
                } else {
                    Err("has a parameter name that is not [A-Za-z0-9_]+")
                };
            }
            let literal_ok = !part.is_empty()
                && *part != "."
                && *part != ".."
                && part.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@')
                });
            if literal_ok {
                Ok(Segment::Literal((*part).to_string()))
            } else {
                Err("has an empty or invalid segment (letters, digits, `-._~:@`, `{param}`)")
            }
        })
        .collect()
}

/// A request path as routes match it and as it is forwarded: escapes of unreserved characters
/// decoded (`%75` is `u`, RFC 3986 §6.2.2.2), the other escapes in upper case (§6.2.2.1).
/// Malformed escapes are kept for the path check to refuse. Without a `%`, the path as it is.
pub fn normalise_path(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            let c = (hi * 16 + lo) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c);
            } else {
                out.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    // Only ASCII escapes were replaced by ASCII, so the text is as valid as it was.
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| raw.to_string()))
}

/// Whether a request path (from [`normalise_path`], starting with `/`) matches a template.
///
/// Upstreams read paths more loosely than a literal comparison, so a route is matched the way
/// the loosest of them would read the path, and a request can never slip from a private or
/// tokenizing route into a broader one: literal segments compare without ASCII case, after up
/// to three percent-decodings, and without a `;` parameter (`/signup;x`, `/SignUp` and
/// `/sign%2575p` are the route `/signup`); one trailing slash is ignored (`/signup/`). The path
/// is forwarded as it is (with its slash and parameter).
pub fn matches(template: &[Segment], path: &str) -> bool {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let parts: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let mut i = 0;
    for seg in template {
        match seg {
            Segment::Rest => return true,
            Segment::Param => {
                if parts
                    .get(i)
                    .is_none_or(|p| p.split(';').next().is_none_or(str::is_empty))
                {
                    return false;
                }
            }
            Segment::Literal(l) => {
                if !parts.get(i).is_some_and(|p| literal_matches(p, l)) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == parts.len()
}

/// Whether a path segment is the literal `literal` (see [`matches`]).
fn literal_matches(segment: &str, literal: &str) -> bool {
    let stem = |s: &str| s.split(';').next().unwrap_or_default().to_string();
    let mut current = stem(segment);
    for _ in 0..=super::egress::DECODE_ROUNDS {
        if current.eq_ignore_ascii_case(literal) {
            return true;
        }
        if !current.contains('%') {
            return false;
        }
        current = stem(&percent_encoding::percent_decode_str(&current).decode_utf8_lossy());
    }
    false
}

/// Whether `method` is a valid route method (`*` or a token of upper-case letters).
pub fn valid_method(method: &str) -> bool {
    method == "*"
        || (!method.is_empty()
            && method.len() <= 16
            && method.bytes().all(|b| b.is_ascii_uppercase()))
}

/// One part of a configured header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Text(&'a str),
    /// `{{secret.<name>}}`, also written with spaces inside the braces (`{{ secret.<name> }}`).
    Secret(&'a str),
}

/// A header value split into its text and its secret references, or why it is malformed.
/// Filling the parts in one pass means a secret's value is never read as a template itself.
pub fn template_parts(value: &str) -> Result<Vec<TemplatePart<'_>>, &'static str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("has an unclosed `{{`");
        };
        let Some(name) = after[..end].trim().strip_prefix("secret.") else {
            return Err("may only refer to `{{secret.<name>}}`");
        };
        if !crate::vault::schema::valid_name(name) {
            return Err("refers to a secret name that is not ^[a-z][a-z0-9_-]{0,62}$");
        }
        if start > 0 {
            out.push(TemplatePart::Text(&rest[..start]));
        }
        out.push(TemplatePart::Secret(name));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(TemplatePart::Text(rest));
    }
    Ok(out)
}

/// The secret names a header value refers to as `{{secret.<name>}}`, or why it is malformed.
pub fn secret_refs(value: &str) -> Result<Vec<&str>, &'static str> {
    Ok(template_parts(value)?
        .into_iter()
        .filter_map(|part| match part {
            TemplatePart::Secret(name) => Some(name),
            TemplatePart::Text(_) => None,
        })
        .collect())
}

/// Checks what can be checked without the database; `fail(field, reason)` collects problems.
pub fn check_shape(c: &ConnectionConfig, mut fail: impl FnMut(String, String)) {
    if !crate::vault::schema::valid_name(&c.name) {
        fail("name".into(), "must match ^[a-z][a-z0-9_-]{0,62}$".into());
    }
    match c.kind {
        Kind::Outbound => {
            if c.base_url.is_none() {
                fail(
                    "base_url".into(),
                    "is required for an outbound connection".into(),
                );
            }
            if c.upstream.is_some() {
                fail(
                    "upstream".into(),
                    "is for inbound connections; outbound ones use base_url".into(),
                );
            }
            if c.signing_secret.is_some() || c.rate_limit.is_some() {
                fail(
                    "signing_secret".into(),
                    "signing_secret and rate_limit are for inbound connections".into(),
                );
            }
        }
        Kind::Inbound => {
            if c.upstream.is_none() {
                fail(
                    "upstream".into(),
                    "is required for an inbound connection".into(),
                );
            }
            if c.base_url.is_some() {
                fail(
                    "base_url".into(),
                    "is for outbound connections; inbound ones use upstream".into(),
                );
            }
        }
    }
    if c.max_body_bytes == 0 || c.max_body_bytes > MAX_MAX_BODY {
        fail(
            "max_body_bytes".into(),
            "must be between 1 and 33554432".into(),
        );
    }
    if !(1..=60_000).contains(&c.timeouts.connect_ms)
        || !(1..=300_000).contains(&c.timeouts.total_ms)
    {
        fail(
            "timeouts".into(),
            "connect_ms must be 1..60000 and total_ms 1..300000".into(),
        );
    }
    if c.rate_limit.as_ref().is_some_and(|r| r.per_minute == 0) {
        fail("rate_limit.per_minute".into(), "must be at least 1".into());
    }
    for (name, value) in &c.headers {
        let field = format!("headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            fail(field.clone(), "is not a valid header name".into());
        } else if super::gateway::is_reserved_header(name)
            || (c.kind == Kind::Inbound && super::gateway::is_inbound_header(name))
        {
            fail(
                field.clone(),
                "is set by the gateway and cannot be configured".into(),
            );
        }
        if let Err(reason) = secret_refs(value) {
            fail(field.clone(), reason.into());
        }
        if value.contains(['\r', '\n', '\0']) {
            fail(field, "may not contain line breaks".into());
        }
    }
    if c.routes.is_empty() {
        fail("routes".into(), "needs at least one route".into());
    }
    if c.routes.len() > 100 {
        fail("routes".into(), "may have at most 100 routes".into());
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        if !crate::vault::schema::valid_name(&r.name) {
            fail(at("name"), "must match ^[a-z][a-z0-9_-]{0,62}$".into());
        } else if !names.insert(r.name.as_str()) {
            fail(at("name"), "is used by another route".into());
        }
        if !valid_method(&r.method) {
            fail(
                at("method"),
                "must be an upper-case HTTP method or `*`".into(),
            );
        }
        if let Err(reason) = parse_template(&r.path) {
            fail(at("path"), reason.into());
        }
        match c.kind {
            Kind::Outbound => {
                if !r.request.tokenize.is_empty() {
                    fail(
                        at("request.tokenize"),
                        "is for inbound connections; outbound requests detokenize".into(),
                    );
                }
                if r.public {
                    fail(at("public"), "only inbound routes can be public".into());
                }
            }
            Kind::Inbound => {
                if !r.request.detokenize.is_empty() {
                    fail(
                        at("request.detokenize"),
                        "inbound connections never detokenize".into(),
                    );
                }
            }
        }
        for (j, d) in r.request.detokenize.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].request.detokenize[{j}].{f}");
            if let Err(e) = Selector::parse(d.location, &d.path) {
                fail(at("path"), e.to_string());
            }
            match Redaction::parse(&d.redaction) {
                Some(Redaction::Default) | None => fail(
                    at("redaction"),
                    "must be one of plain, masked, redacted".into(),
                ),
                Some(_) => {}
            }
        }
        for (at, t) in r.tokenize_rules(i) {
            if let Err(e) = Selector::parse(t.location, &t.path) {
                fail(format!("{at}.path"), e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_templates_split_into_text_and_secrets() {
        use TemplatePart::{Secret, Text};
        assert_eq!(
            template_parts("Bearer {{secret.stripe_key}}"),
            Ok(vec![Text("Bearer "), Secret("stripe_key")])
        );
        assert_eq!(
            template_parts("Bearer {{ secret.stripe_key }}"),
            Ok(vec![Text("Bearer "), Secret("stripe_key")])
        );
        assert_eq!(
            template_parts("{{secret.a}}:{{secret.b}}!"),
            Ok(vec![Secret("a"), Text(":"), Secret("b"), Text("!")])
        );
        assert_eq!(template_parts("plain"), Ok(vec![Text("plain")]));
        assert_eq!(
            secret_refs("{{ secret.a }} {{secret.b}}"),
            Ok(vec!["a", "b"])
        );
        assert!(template_parts("{{secret.a").is_err());
        assert!(template_parts("{{other.a}}").is_err());
        assert!(template_parts("{{secret.Bad}}").is_err());
    }

    #[test]
    fn paths_are_normalised_and_matched_as_loosely_as_upstreams_read_them() {
        assert_eq!(normalise_path("/sign%75p/%7e%2d%41"), "/signup/~-A");
        assert_eq!(
            normalise_path("/a%2fb/%c3%a9/%zz/%2"),
            "/a%2Fb/%C3%A9/%zz/%2"
        );
        assert!(matches!(
            normalise_path("/plain/path"),
            std::borrow::Cow::Borrowed(_)
        ));
        let signup = parse_template("/signup").unwrap_or_default();
        for path in [
            "/signup",
            "/signup/",
            "/SignUp",
            "/signup;x",
            "/signup;jsessionid=1/",
            "/sign%2575p",
            "/sign%252575p",
        ] {
            assert!(matches(&signup, &normalise_path(path)), "{path}");
        }
        for path in [
            "/signup/x",
            "/signups",
            "/sign%2Fup",
            "/",
            "/signup//",
            "/;/signup",
        ] {
            assert!(!matches(&signup, &normalise_path(path)), "{path}");
        }
        let customer = parse_template("/customers/{id}").unwrap_or_default();
        assert!(matches(&customer, "/customers/cus_1"));
        assert!(matches(&customer, "/Customers/cus_1/"));
        for path in [
            "/customers",
            "/customers/",
            "/customers/;x",
            "/customers/a/b",
        ] {
            assert!(!matches(&customer, path), "{path}");
        }
        let root = parse_template("/").unwrap_or_default();
        assert!(matches(&root, "/") && matches(&root, "") && !matches(&root, "/x"));
        let rest = parse_template("/files/{*rest}").unwrap_or_default();
        assert!(matches(&rest, "/files/a/b") && matches(&rest, "/FILES/"));
    }
}
