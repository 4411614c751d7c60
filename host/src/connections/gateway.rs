//! One connection call, from the caller to the upstream and back.
//!
//! Outbound: match the route; detokenize its request locations as the connection's principal;
//! run its request function; add the configured headers (secrets opened only here); forward;
//! run the response function; tokenize the reply's locations; check that no plaintext revealed
//! during the call returns to the caller. Inbound: authenticate with the connection's key (or
//! rate-limit a public route); tokenize the request's locations; run the request function;
//! sign and forward; return the upstream's reply.

use super::ConnError;
use super::config::{Kind, matches, normalise_path};
use super::egress;
use super::locations::{self, Found, Message, Selector};
use super::service::{Compiled, CompiledRoute, ConnectionService};
use crate::functions::sandbox::{Hook, HttpMessage};
use crate::governance::accounts::Caller;
use crate::governance::audit;
use crate::governance::gate::CedarGate;
use crate::leak::reveals;
use crate::metrics;
use crate::vault::{Redaction, VaultError};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;
use zeroize::Zeroizing;

/// Tokens or values handled in one call at most (one vault batch).
const MAX_VALUES: usize = 1000;

/// A request as the gateway receives it.
pub struct CallRequest {
    pub method: Method,
    /// The path after `/v1/gateway/{connection}` (or `/v1/inbound/{connection}`), still
    /// percent-encoded as received, starting with `/`.
    pub raw_path: String,
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// What the gateway answers.
pub struct CallResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Headers that describe one hop, not the message; never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a connection's configuration may not set: the gateway owns them.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    HOP_BY_HOP.contains(&name.as_str())
        || matches!(name.as_str(), "host" | "content-length")
        || name.starts_with("x-strongroom-")
}

/// Headers that ask the upstream to treat a request as another method: the route was matched,
/// and its rules chosen, for the method the gateway saw.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that ask the upstream to serve another path than the request line's (IIS, Symfony,
/// Zend): the route was matched, and its rules chosen, for the path the gateway saw.
const PATH_OVERRIDES: &[&str] = &["x-original-url", "x-rewrite-url"];

/// What an inbound client says about where it connects from, or how a proxy before the upstream
/// reached it; an upstream that trusts its peer (the gateway) would believe it. The gateway sets
/// `x-forwarded-for` itself.
const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// Headers the gateway sets on an inbound call, so its connection's configuration may not.
pub fn is_inbound_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-forwarded-for")
}

/// `headers` minus the hop's (the hop-by-hop ones and those the `Connection` header names,
/// RFC 9110 §7.6.1) and those `dropped` names.
fn without_hop(headers: &HeaderMap, dropped: impl Fn(&str) -> bool) -> HeaderMap {
    let connection = headers.get_all(header::CONNECTION);
    let named = |n: &str| {
        connection.iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(n.as_bytes()))
        })
    };
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || dropped(n) || named(n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The caller's headers minus what must not travel on: its credentials, the hop's headers,
/// our own, the length (recomputed), method overrides and, from an inbound client, its claims
/// about where it connects from.
fn forwardable(headers: &HeaderMap, inbound: bool) -> HeaderMap {
    without_hop(headers, |n| {
        is_reserved_header(n)
            || matches!(
                n,
                "authorization" | "cookie" | "x-request-id" | "accept-encoding"
            )
            || METHOD_OVERRIDES.contains(&n)
            || PATH_OVERRIDES.contains(&n)
            || (inbound && CLIENT_CLAIMS.contains(&n))
    })
}

/// The upstream's headers minus the hop's and the length.
fn returnable(headers: &HeaderMap) -> HeaderMap {
    without_hop(headers, |n| n == "content-length")
}

/// The connection's principal in Cedar: `Connection::"<name>"`, role `connection`.
fn connection_caller(c: &Compiled) -> Caller {
    Caller::principal(&c.name, "connection", format!("v{}", c.version))
}

fn location_error(e: locations::LocationError) -> ConnError {
    ConnError::call(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
}

fn to_wit(
    method: &Method,
    url: &str,
    status: Option<StatusCode>,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> HttpMessage {
    HttpMessage {
        method: method.to_string(),
        url: url.to_string(),
        status: status.map(|s| s.as_u16()),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

/// A status the gateway passes on: a final reply HTTP defines (200 to 599). A 1xx (101
/// above all) would make the server switch or answer 500.
fn is_final(status: StatusCode) -> bool {
    (200..=599).contains(&status.as_u16())
}

/// The URL a route's function is shown: the request function the one about to be forwarded
/// (its values revealed, as the route grants), the response function the one the caller sent,
/// tokens and all (a function never gets plaintext in on-response).
fn shown_url<'a>(hook: Hook, caller: &'a url::Url, forwarded: &'a url::Url) -> &'a url::Url {
    match hook {
        Hook::Request => forwarded,
        Hook::Response => caller,
    }
}

fn from_wit_headers(headers: &[(String, String)]) -> Result<HeaderMap, ConnError> {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err(ConnError::call(
                StatusCode::BAD_GATEWAY,
                "function_error",
                "the function returned a header that is not valid HTTP",
            ));
        };
        out.append(name, value);
    }
    Ok(out)
}

/// Whether any revealed value appears in the message that returns to the caller.
/// A compressed body cannot be inspected, so it counts as a leak (the gateway never asks for
/// compression; an upstream that compresses anyway is refused when something was revealed).
fn leaks(headers: &HeaderMap, body: &[u8], revealed: &[Zeroizing<Vec<u8>>]) -> bool {
    if revealed.is_empty() {
        return false;
    }
    if locations::is_encoded(headers) {
        return true;
    }
    if reveals(body, revealed) {
        return true;
    }
    let mut head = Zeroizing::new(Vec::new());
    for (k, v) in headers {
        head.extend_from_slice(k.as_str().as_bytes());
        head.push(b':');
        head.extend_from_slice(v.as_bytes());
        head.push(b'\n');
    }
    reveals(head.as_slice(), revealed)
}

/// What the vaults asked so far answered for one token.
#[derive(Default)]
struct Slot {
    /// A revealed value wins over an error, `forbidden` over the other errors.
    answer: Option<Result<Zeroizing<String>, String>>,
    /// How many vaults hold the token (revealed it or refused it as `forbidden`).
    holders: u32,
}

/// Why a token is not revealed.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Forbidden,
    /// More than one vault holds it: which value was meant cannot be known.
    Ambiguous,
    NotAToken,
}

impl Slot {
    /// One more vault's answer.
    fn merge(&mut self, r: Result<Zeroizing<String>, String>) {
        if r.as_ref().is_ok() || r.as_ref().is_err_and(|code| code == "forbidden") {
            self.holders += 1;
        }
        match (&self.answer, r) {
            (Some(Ok(_)), _) => {}
            (_, Ok(v)) => self.answer = Some(Ok(v)),
            (Some(Err(code)), Err(_)) if code == "forbidden" => {}
            (_, Err(code)) => self.answer = Some(Err(code)),
        }
    }

    /// The value to use, once every vault was asked.
    fn decide(self) -> Result<Zeroizing<String>, Refusal> {
        if self.holders > 1 {
            return Err(Refusal::Ambiguous);
        }
        match self.answer {
            Some(Ok(value)) => Ok(value),
            Some(Err(code)) if code == "forbidden" => Err(Refusal::Forbidden),
            _ => Err(Refusal::NotAToken),
        }
    }
}

/// Every value revealed while serving a call (detokenized, read from a file by a function, or
/// a secret put in a header), as bytes: a file need not be text.
type Revealed = Vec<Zeroizing<Vec<u8>>>;

/// `revealed` with each value once: a token repeated across a `[*]` array is revealed each time
/// it appears, and every copy would cost the leak check its scans of the reply. The copies
/// dropped are zeroed.
fn distinct(revealed: &mut Revealed) {
    revealed.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
    revealed.dedup_by(|a, b| a.as_slice() == b.as_slice());
}

/// The call's answer when the reply would carry a revealed value back: counted in the audit
/// event and logged (who, which connection and route; never the value), since a caller who
/// can make the upstream echo a field of its choice can use this answer to confirm a guess.
fn egress_blocked(message: &'static str) -> ConnError {
    audit::note(|e| {
        e.count("egress_blocked", 1);
        tracing::warn!(
            request_id = %e.request_id,
            principal = e.principal.as_deref().unwrap_or("-"),
            connection = e.connection.as_deref().unwrap_or("-"),
            "egress_blocked: the reply held a value revealed for the call"
        );
    });
    ConnError::call(StatusCode::BAD_GATEWAY, "egress_blocked", message)
}

impl ConnectionService {
    /// The route of `conn` for this method and (normalised) path: its position in `routes`.
    fn route(conn: &Compiled, method: &Method, path: &str) -> Result<usize, ConnError> {
        let at = conn
            .routes
            .iter()
            .position(|r| {
                r.method.as_ref().is_none_or(|m| m == method) && matches(&r.template, path)
            })
            .ok_or_else(|| {
                ConnError::Vault(VaultError::NotFound(format!(
                    "a route of connection `{}` for this method and path",
                    conn.name
                )))
            })?;
        let name = &conn.route(at).name;
        audit::note(|e| e.connection = Some(format!("{}@{}/{}", conn.name, conn.version, name)));
        Ok(at)
    }

    /// `ANY /v1/gateway/{connection}/{path…}`, before its body is read: the connection and the
    /// route (the caller is already authenticated and allowed to call this connection).
    pub async fn admit_outbound(
        &self,
        name: &str,
        method: &Method,
        raw_path: &str,
    ) -> Result<Admitted, ConnError> {
        let conn = self.active(name).await?;
        if conn.config.kind != Kind::Outbound {
            return Err(VaultError::NotFound(format!("outbound connection `{name}`")).into());
        }
        let route = Self::route(&conn, method, &normalise_path(raw_path))?;
        Ok(Admitted { conn, route })
    }

    /// `ANY /v1/inbound/{connection}/{path…}`, before its body is read: the connection, the
    /// route, and the connection's key (or, on a public route, the client's rate limit). The
    /// client may be anyone, so a connection that cannot be used is answered without its
    /// reasons (they are logged).
    pub async fn admit_inbound(
        &self,
        name: &str,
        client: IpAddr,
        method: &Method,
        raw_path: &str,
        headers: &HeaderMap,
    ) -> Result<Admitted, ConnError> {
        let conn = self.active(name).await.map_err(|e| match e {
            ConnError::Upstream { message, .. } => {
                tracing::warn!(connection = name, reason = %message, "an inbound connection cannot be used");
                ConnError::call(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the connection cannot be used now",
                )
            }
            other => other,
        })?;
        if conn.config.kind != Kind::Inbound {
            return Err(VaultError::NotFound(format!("inbound connection `{name}`")).into());
        }
        let route = Self::route(&conn, method, &normalise_path(raw_path))?;
        audit::note(|e| {
            e.action = "inbound_connection".into();
            e.principal = Some(format!("connection:{name}"));
        });
        if conn.route(route).public {
            let per_minute = conn.config.rate_limit.as_ref().map_or(60, |r| r.per_minute);
            if !self.limiter.allow(name, client, per_minute) {
                return Err(ConnError::call(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many calls to this public route; try again in a minute",
                ));
            }
        } else {
            let presented = crate::governance::accounts::bearer(headers).unwrap_or_default();
            match self.check_key(name, presented).await? {
                Some(key_id) => audit::note(|e| e.key_id = Some(key_id)),
                None => {
                    return Err(ConnError::call(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "this route needs the connection's key: send `Authorization: Bearer <key>`",
                    ));
                }
            }
        }
        if locations::has_several_content_types(headers) {
            return Err(ConnError::call(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send one Content-Type header",
            ));
        }
        Ok(Admitted { conn, route })
    }

    /// Runs a function on the call's path; its output replaces the message.
    async fn run_function(
        &self,
        name: &str,
        hook: Hook,
        message: HttpMessage,
        purpose: &str,
        revealed: &mut Revealed,
    ) -> Result<HttpMessage, ConnError> {
        let t = self
            .deps
            .functions
            .transform(name, hook, message, purpose)
            .await
            .map_err(|e| function_failure(name, e))?;
        audit::note(|e| e.count("function_us", t.duration_us));
        revealed.extend(t.revealed);
        t.result.map_err(|f| {
            let (status, code) = match (f.kind, f.message.split(':').next()) {
                ("function_error", Some("bad request")) => {
                    (StatusCode::BAD_REQUEST, "function_error")
                }
                ("function_error", Some("forbidden")) => (StatusCode::FORBIDDEN, "function_error"),
                _ => (StatusCode::BAD_GATEWAY, "function_error"),
            };
            // A guest's message is its own text: it must not carry what it revealed, and its
            // internal failures are logged, not shown.
            let hidden = f.message.starts_with("internal") || reveals(&f.message, revealed);
            let message = if hidden {
                format!("the function `{name}` failed ({})", f.kind)
            } else {
                format!("the function `{name}` refused the message: {}", f.message)
            };
            ConnError::call(status, code, message)
        })
    }

    /// Forwards a request and reads the reply (up to the connection's body limit).
    async fn forward(
        &self,
        conn: &Compiled,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<CallResponse, ConnError> {
        let started = Instant::now();
        let sent = conn
            .client
            .request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let direction = match conn.config.kind {
            Kind::Outbound => metrics::Direction::Outbound,
            Kind::Inbound => metrics::Direction::Inbound,
        };
        let failed = |e: &reqwest::Error| {
            let outcome = if e.is_timeout() { "timeout" } else { "failed" };
            metrics::upstream(direction, outcome, started.elapsed());
            upstream_failure(e)
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                audit::note(|ev| ev.count("upstream_ms", started.elapsed().as_millis() as u64));
                return Err(failed(&e));
            }
        };
        let status = resp.status();
        if !is_final(status) {
            // An informational or switched answer (101) is not a reply the gateway can pass
            // on, nor is a status HTTP does not define.
            metrics::upstream(direction, "failed", started.elapsed());
            audit::note(|e| e.count("upstream_ms", started.elapsed().as_millis() as u64));
            return Err(ConnError::call(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!(
                    "the upstream answered status {}, not a final reply",
                    status.as_u16()
                ),
            ));
        }
        let headers = returnable(resp.headers());
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > conn.config.max_body_bytes {
                        return Err(ConnError::call(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            "the upstream's reply is larger than the connection's max_body_bytes",
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(failed(&e)),
            }
        }
        metrics::upstream(direction, "answered", started.elapsed());
        let ms = started.elapsed().as_millis() as u64;
        audit::note(|e| {
            e.count("upstream_status", u64::from(status.as_u16()));
            e.count("upstream_ms", ms);
        });
        Ok(CallResponse {
            status,
            headers,
            body,
        })
    }

    /// Detokenizes the values found at the route's locations, as the connection.
    async fn detokenize(
        &self,
        conn: &Compiled,
        route: &CompiledRoute,
        found: Vec<Found>,
        purpose: &str,
    ) -> Result<Vec<(Found, Zeroizing<String>)>, ConnError> {
        let gate = CedarGate::for_connection(
            self.deps.gov.engine(),
            connection_caller(conn),
            purpose.to_string(),
        );
        let all_vaults = || async {
            self.deps
                .vault
                .list_vaults()
                .await
                .map(|list| list.into_iter().map(|v| v.name).collect::<Vec<String>>())
        };
        // Group by (level, vault): one vault call each.
        let mut groups: HashMap<(Redaction, Option<String>), Vec<usize>> = HashMap::new();
        for (i, f) in found.iter().enumerate() {
            let (level, vault) = route.detokenize_levels[f.selector()].clone();
            groups.entry((level, vault)).or_default().push(i);
        }
        let mut slots: Vec<Slot> = found.iter().map(|_| Slot::default()).collect();
        for ((level, vault), members) in groups {
            let tokens: Vec<String> = members
                .iter()
                .map(|i| found[*i].value().to_string())
                .collect();
            // Tokens are unique only within a vault (format-preserving ones may collide across
            // vaults), so without a named vault every vault is asked: a token two of them hold
            // is refused rather than guessed.
            let vaults = match vault {
                Some(v) => vec![v],
                None => all_vaults().await?,
            };
            for v in vaults {
                let results = match self
                    .deps
                    .vault
                    .detokenize_plain(&v, &tokens, level, &gate)
                    .await
                {
                    Ok(r) => r,
                    Err(VaultError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                for (i, r) in members.iter().zip(results) {
                    slots[*i].merge(r);
                }
            }
        }
        let mut out = Vec::with_capacity(found.len());
        for (f, slot) in found.into_iter().zip(slots) {
            let location = route.detokenize[f.selector()].describe();
            match slot.decide() {
                Ok(value) => out.push((f, value)),
                Err(Refusal::Forbidden) => {
                    return Err(ConnError::call(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "`{location}`: the connection's policies do not allow revealing this token"
                        ),
                    ));
                }
                Err(Refusal::Ambiguous) => {
                    return Err(ConnError::call(
                        StatusCode::BAD_REQUEST,
                        "invalid_token",
                        format!(
                            "`{location}` holds a token that more than one vault holds; name the vault in the rule or the connection"
                        ),
                    ));
                }
                Err(Refusal::NotAToken) => {
                    return Err(ConnError::call(
                        StatusCode::BAD_REQUEST,
                        "invalid_token",
                        format!(
                            "`{location}` holds a value that is not a token this route can detokenize"
                        ),
                    ));
                }
            }
        }
        audit::note(|e| e.count("detokenized", out.len() as u64));
        Ok(out)
    }

    /// Tokenizes the values found at `selectors` into their rules' columns, as the connection.
    /// `reply`: the values come from the upstream (a failure is then the upstream's, 502).
    async fn tokenize(
        &self,
        conn: &Compiled,
        rules: &[super::config::TokenizeRule],
        selectors: &[Selector],
        found: Vec<Found>,
        purpose: &str,
        reply: bool,
    ) -> Result<Vec<(Found, String)>, ConnError> {
        let gate = CedarGate::for_connection(
            self.deps.gov.engine(),
            connection_caller(conn),
            purpose.to_string(),
        );
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in found.iter().enumerate() {
            groups.entry(f.selector()).or_default().push(i);
        }
        let mut tokens: Vec<Option<String>> = found.iter().map(|_| None).collect();
        for (selector, members) in groups {
            let rule = &rules[selector];
            let location = selectors[selector].describe();
            let values = members
                .iter()
                .map(|i| serde_json::Value::String(found[*i].value().to_string()))
                .collect();
            let issued = self
                .deps
                .vault
                .tokenize(&rule.vault, &rule.table, &rule.column, values, &gate)
                .await
                .map_err(|e| tokenize_failure(e, &location, rule, reply))?;
            for (i, t) in members.iter().zip(issued) {
                tokens[*i] = Some(t);
            }
        }
        let out: Vec<(Found, String)> = found
            .into_iter()
            .zip(tokens)
            .filter_map(|(f, t)| t.map(|t| (f, t)))
            .collect();
        audit::note(|e| e.count("tokenized", out.len() as u64));
        Ok(out)
    }

    /// Replaces the values at a route's tokenize locations in `msg` by tokens. `reply`: the
    /// message is the upstream's, so a failure is the upstream's (502), not the caller's (400).
    async fn tokenize_in(
        &self,
        conn: &Compiled,
        rules: &[super::config::TokenizeRule],
        selectors: &[Selector],
        msg: &mut Message<'_>,
        purpose: &str,
        reply: bool,
    ) -> Result<(), ConnError> {
        let fail = |e: locations::LocationError| {
            if reply {
                ConnError::call(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("the upstream's reply: {e}"),
                )
            } else {
                location_error(e)
            }
        };
        let found = locations::collect(msg, selectors).map_err(fail)?;
        if found.len() > MAX_VALUES {
            return Err(if reply {
                ConnError::call(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("the upstream's reply holds more than {MAX_VALUES} values to tokenize"),
                )
            } else {
                ConnError::call(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("at most {MAX_VALUES} values per call"),
                )
            });
        }
        if found.is_empty() {
            return Ok(());
        }
        let edits = self
            .tokenize(conn, rules, selectors, found, purpose, reply)
            .await?;
        locations::replace(msg, selectors, edits).map_err(fail)
    }

    /// `ANY /v1/gateway/{connection}/{path…}`: the caller is already authenticated and allowed
    /// to call this connection.
    pub async fn call_outbound(
        &self,
        Admitted { conn, route }: Admitted,
        purpose: &str,
        req: CallRequest,
    ) -> Result<CallResponse, ConnError> {
        let route = &conn.routes[route];
        let config = conn.route(route.index);
        check_body(&conn, &req.body)?;
        let path = normalise_path(&req.raw_path);
        let mut headers = forwardable(&req.headers, false);
        let mut query = req.raw_query.clone().unwrap_or_default();
        let mut body = req.body;
        let mut revealed: Revealed = Vec::new();

        // 1. Tokens to values, as the connection.
        if !route.detokenize.is_empty() {
            let mut msg = Message {
                headers: &mut headers,
                query: Some(&mut query),
                body: &mut body,
            };
            let found = locations::collect(&msg, &route.detokenize).map_err(location_error)?;
            if found.len() > MAX_VALUES {
                return Err(ConnError::call(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("at most {MAX_VALUES} tokens per call"),
                ));
            }
            if !found.is_empty() {
                let values = self.detokenize(&conn, route, found, purpose).await?;
                let mut edits = Vec::with_capacity(values.len());
                for (f, v) in values {
                    edits.push((f, v.as_str().to_string()));
                    revealed.push(Zeroizing::new(v.as_bytes().to_vec()));
                }
                locations::replace(&mut msg, &route.detokenize, edits).map_err(location_error)?;
            }
        }

        // 2. Where it goes (the caller's path may not leave the base URL).
        let mut url = target(&conn, &path, query)?;
        let caller_url = match config.response.function {
            Some(_) => Some(target(&conn, &path, req.raw_query.unwrap_or_default())?),
            None => None,
        };
        let mut method = req.method;

        // 3. The request function.
        if let Some(f) = &config.request.function {
            (method, url, headers, body) = self
                .request_function(
                    &conn,
                    f,
                    (method, url, headers, body),
                    purpose,
                    &mut revealed,
                )
                .await?;
        }

        // 4. The connection's own headers (secrets filled in when the version compiled).
        Self::add_configured_headers(&conn, &mut headers, &mut revealed);

        // 5. The third party.
        let mut resp = self
            .forward(&conn, method.clone(), url.clone(), headers, body)
            .await?;

        // 6. The response function, then values to tokens.
        if let (Some(f), Some(caller_url)) = (&config.response.function, &caller_url) {
            let shown = shown_url(Hook::Response, caller_url, &url);
            let msg = to_wit(
                &method,
                shown.as_str(),
                Some(resp.status),
                &resp.headers,
                std::mem::take(&mut resp.body),
            );
            let out = self
                .run_function(f, Hook::Response, msg, purpose, &mut revealed)
                .await?;
            if let Some(s) = out.status {
                resp.status = StatusCode::from_u16(s)
                    .ok()
                    .filter(|s| is_final(*s))
                    .ok_or_else(|| {
                        ConnError::call(
                            StatusCode::BAD_GATEWAY,
                            "function_error",
                            format!("the function `{f}` set status {s}, not one of 200 to 599"),
                        )
                    })?;
            }
            resp.headers = returnable(&from_wit_headers(&out.headers)?);
            resp.body = out.body;
        }
        if !route.tokenize_response.is_empty() {
            let mut msg = Message {
                headers: &mut resp.headers,
                query: None,
                body: &mut resp.body,
            };
            self.tokenize_in(
                &conn,
                &config.response.tokenize,
                &route.tokenize_response,
                &mut msg,
                purpose,
                true,
            )
            .await?;
        }

        // 7. Nothing revealed goes back.
        distinct(&mut revealed);
        if leaks(&resp.headers, &resp.body, &revealed) {
            return Err(egress_blocked(
                "the reply would carry a value revealed for this call back to the caller; tokenize it in the route's response rules",
            ));
        }
        Ok(resp)
    }

    /// Runs a route's request function on the outgoing request; its method, URL (same origin,
    /// under the base path), headers and body are what goes on.
    async fn request_function(
        &self,
        conn: &Compiled,
        function: &str,
        (method, url, headers, body): (Method, url::Url, HeaderMap, Vec<u8>),
        purpose: &str,
        revealed: &mut Revealed,
    ) -> Result<(Method, url::Url, HeaderMap, Vec<u8>), ConnError> {
        let msg = to_wit(&method, url.as_str(), None, &headers, body);
        let out = self
            .run_function(function, Hook::Request, msg, purpose, revealed)
            .await?;
        let url = if out.url == url.as_str() {
            url
        } else {
            self.function_url(conn, &out.url)?
        };
        let method = Method::from_bytes(out.method.as_bytes()).map_err(|_| {
            ConnError::call(
                StatusCode::BAD_GATEWAY,
                "function_error",
                "the function returned an invalid method",
            )
        })?;
        let headers = forwardable(&from_wit_headers(&out.headers)?, false);
        Ok((method, url, headers, out.body))
    }

    /// A URL a request function chose: the same origin, under the base path.
    fn function_url(&self, conn: &Compiled, raw: &str) -> Result<url::Url, ConnError> {
        let refused = || {
            ConnError::call(
                StatusCode::BAD_GATEWAY,
                "function_error",
                "the function's URL leaves the connection's base URL",
            )
        };
        let url = url::Url::parse(raw).map_err(|_| refused())?;
        if url.origin() != conn.base.origin() {
            return Err(refused());
        }
        let base_path = conn.base.path().trim_end_matches('/');
        let rest = url.path().strip_prefix(base_path).ok_or_else(refused)?;
        let rest = if rest.is_empty() { "/" } else { rest };
        if !rest.starts_with('/') {
            return Err(refused());
        }
        egress::join_path(&conn.base, rest, url.query()).map_err(|_| refused())
    }

    /// The connection's own headers (secrets already filled in when the version compiled).
    fn add_configured_headers(conn: &Compiled, headers: &mut HeaderMap, revealed: &mut Revealed) {
        for (name, value) in &conn.headers {
            headers.insert(name.clone(), value.clone());
        }
        revealed.extend(conn.secret_values.iter().cloned());
    }

    /// `ANY /v1/inbound/{connection}/{path…}`, admitted by [`Self::admit_inbound`].
    pub async fn call_inbound(
        &self,
        Admitted { conn, route }: Admitted,
        client: IpAddr,
        req: CallRequest,
    ) -> Result<CallResponse, ConnError> {
        let route = &conn.routes[route];
        let config = conn.route(route.index);
        let path = normalise_path(&req.raw_path);
        check_body(&conn, &req.body)?;
        let mut headers = forwardable(&req.headers, true);
        let mut query = req.raw_query.clone().unwrap_or_default();
        let mut body = req.body;
        if !route.tokenize_request.is_empty() {
            let mut msg = Message {
                headers: &mut headers,
                query: Some(&mut query),
                body: &mut body,
            };
            self.tokenize_in(
                &conn,
                &config.request.tokenize,
                &route.tokenize_request,
                &mut msg,
                "",
                false,
            )
            .await?;
        }
        let mut url = target(&conn, &path, query)?;
        let mut method = req.method;
        let mut revealed = Vec::new();
        if let Some(f) = &config.request.function {
            (method, url, headers, body) = self
                .request_function(&conn, f, (method, url, headers, body), "", &mut revealed)
                .await
                .map_err(|e| to_anonymous(&conn.name, e))?;
        }
        // The connection's own headers first: what the gateway sets below wins (a version
        // stored before a name was reserved cannot override it either).
        Self::add_configured_headers(&conn, &mut headers, &mut revealed);
        headers.insert(
            HeaderName::from_static("x-strongroom-connection"),
            HeaderValue::from_str(&conn.name)
                .map_err(|_| ConnError::Internal("connection name".into()))?,
        );
        // The peer the gateway saw, or behind a trusted proxy the client it names; never the
        // client's own claim.
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(&client.to_string())
                .map_err(|_| ConnError::Internal("client address".into()))?,
        );
        if let Some(key) = &conn.signing_key {
            let t = chrono::Utc::now().timestamp();
            let signature = sign(key.as_bytes(), t, &body);
            headers.insert(
                HeaderName::from_static("x-strongroom-signature"),
                HeaderValue::from_str(&format!("t={t},v1={signature}"))
                    .map_err(|_| ConnError::Internal("signature header".into()))?,
            );
        }
        let resp = self
            .forward(&conn, method, url, headers, body)
            .await
            .map_err(|e| to_anonymous(&conn.name, e))?;
        distinct(&mut revealed);
        if leaks(&resp.headers, &resp.body, &revealed) {
            return Err(egress_blocked(
                "the reply would carry a value revealed for this call back to the caller",
            ));
        }
        Ok(resp)
    }
}

/// A failure of an inbound call's function or forward, as its client (who may be anyone) sees
/// it: the status, without the reasons (an egress rule, a function's name or text), which are
/// logged. A function's own text is not logged: it may quote the client's message.
fn to_anonymous(connection: &str, e: ConnError) -> ConnError {
    let ConnError::Upstream {
        status,
        code,
        message,
    } = e
    else {
        return e;
    };
    let reason = if code == "function_error" {
        "(the function's message is not logged)"
    } else {
        message.as_str()
    };
    tracing::warn!(
        connection,
        status = status.as_u16(),
        code,
        reason,
        "an inbound call failed"
    );
    match status {
        s if s.is_client_error() => ConnError::call(s, code, "the request was refused"),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
            ConnError::call(status, code, "the connection cannot be used now")
        }
        _ => ConnError::call(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the connection cannot be used now",
        ),
    }
}

/// A function that could not run to its end is the call's 502 (never a 500): not there, did
/// not stop in time, or its task failed. The reason is logged; a database failure is the
/// database's answer.
fn function_failure(name: &str, e: crate::functions::FunctionsError) -> ConnError {
    use crate::functions::FunctionsError;
    match e {
        FunctionsError::NotFound(what) => ConnError::call(
            StatusCode::BAD_GATEWAY,
            "function_error",
            format!("the route's {what} is not available"),
        ),
        FunctionsError::Db(e) => ConnError::Vault(VaultError::Db(e)),
        e @ FunctionsError::Unavailable => ConnError::call(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
        other => {
            tracing::warn!(function = name, reason = %other, "a connection's function did not complete");
            ConnError::call(
                StatusCode::BAD_GATEWAY,
                "function_error",
                format!("the function `{name}` did not complete"),
            )
        }
    }
}

/// A tokenize rule's failure as the caller sees it. `reply`: the value is the upstream's (502);
/// otherwise it is an inbound client's, and that client may be anyone, so the message names
/// the location but never the vault, table or column behind it. A rule whose column is gone
/// (dropped after the connection was configured) is the connection's fault: 502, logged.
fn tokenize_failure(
    e: VaultError,
    location: &str,
    rule: &super::config::TokenizeRule,
    reply: bool,
) -> ConnError {
    let column = format!("{}/{}/{}", rule.vault, rule.table, rule.column);
    let into = if reply { column.as_str() } else { "its column" };
    match e {
        VaultError::Invalid { details, .. } => {
            let (status, code) = if reply {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            } else {
                (StatusCode::BAD_REQUEST, "invalid_request")
            };
            ConnError::call(
                status,
                code,
                format!(
                    "`{location}` is not a valid value for {into}: {}",
                    details.first().map_or("invalid", |d| d.reason.as_str())
                ),
            )
        }
        VaultError::Forbidden { .. } => ConnError::call(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{location}`: the connection's policies do not allow tokenizing into {into}"),
        ),
        VaultError::NotFound(what) => {
            tracing::warn!(column = %column, missing = %what, "a connection's tokenize rule points at a column that is gone");
            ConnError::call(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!(
                    "`{location}`: the route's tokenize rule cannot be applied; its column is gone"
                ),
            )
        }
        VaultError::Conflict { .. } if !reply => ConnError::call(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{location}`: this value is already taken"),
        ),
        VaultError::Conflict { .. } => ConnError::call(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("`{location}`: the upstream's value is already taken in {into}"),
        ),
        other => ConnError::Vault(other),
    }
}

/// A call that passed the checks needing no body ([`ConnectionService::admit_outbound`],
/// [`ConnectionService::admit_inbound`]): its connection's version and route.
pub struct Admitted {
    conn: std::sync::Arc<Compiled>,
    route: usize,
}

impl Admitted {
    /// The most the request body may hold: read no more.
    pub fn max_body_bytes(&self) -> usize {
        self.conn.config.max_body_bytes
    }
}

/// Refuses a body over the connection's cap.
fn check_body(conn: &Compiled, body: &[u8]) -> Result<(), ConnError> {
    if body.len() > conn.config.max_body_bytes {
        return Err(ConnError::call(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the connection's max_body_bytes",
        ));
    }
    Ok(())
}

/// Where a call goes: the caller's path and query under the base URL (never outside it).
fn target(conn: &Compiled, raw_path: &str, query: String) -> Result<url::Url, ConnError> {
    let query = (!query.is_empty()).then_some(query);
    egress::join_path(&conn.base, raw_path, query.as_deref())
        .map_err(|e| ConnError::call(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()))
}

/// `hex(HMAC-SHA256(secret, "<t>." || body))`: what an upstream recomputes to verify an inbound
/// request came through the vault (and when, against replays).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A failed forward, as the caller sees it: 504 on a timeout, 502 otherwise, naming the egress
/// rule when the guard refused the address.
fn upstream_failure(e: &reqwest::Error) -> ConnError {
    if e.is_timeout() {
        return ConnError::call(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream did not answer in time",
        );
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(egress) = s.downcast_ref::<egress::EgressError>() {
            return ConnError::call(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the upstream is refused: {egress}"),
            );
        }
        source = s.source();
    }
    ConnError::call(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        if e.is_connect() {
            "could not connect to the upstream"
        } else {
            "the upstream's reply could not be read"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_named_by_connection_stay_on_the_hop_both_ways() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Hop"),
            ("x-hop", "1"),
            ("x-kept", "2"),
            ("keep-alive", "timeout=5"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("content-length", "3"),
        ] {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let names = |h: &HeaderMap| h.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&forwardable(&headers, true)), ["x-kept"]);
        assert_eq!(
            names(&forwardable(&headers, false)),
            ["x-kept", "x-forwarded-for", "forwarded"]
        );
        assert_eq!(
            names(&returnable(&headers)),
            [
                "x-kept",
                "x-http-method-override",
                "x-forwarded-for",
                "forwarded"
            ]
        );
    }

    #[test]
    fn a_token_two_vaults_hold_is_refused_not_guessed() {
        let decide = |answers: &[Result<&str, &str>]| {
            let mut slot = Slot::default();
            for a in answers {
                slot.merge(
                    a.map(|v| Zeroizing::new(v.to_string()))
                        .map_err(str::to_string),
                );
            }
            slot.decide().map(|v| v.as_str().to_string())
        };
        assert_eq!(decide(&[Err("not_found"), Ok("a")]), Ok("a".to_string()));
        assert_eq!(decide(&[Ok("a"), Ok("b")]), Err(Refusal::Ambiguous));
        assert_eq!(
            decide(&[Ok("a"), Err("forbidden")]),
            Err(Refusal::Ambiguous)
        );
        assert_eq!(
            decide(&[Err("forbidden"), Ok("a")]),
            Err(Refusal::Ambiguous)
        );
        assert_eq!(
            decide(&[Err("forbidden"), Err("not_found")]),
            Err(Refusal::Forbidden)
        );
        assert_eq!(decide(&[Err("not_found")]), Err(Refusal::NotAToken));
        assert_eq!(decide(&[]), Err(Refusal::NotAToken));
    }

    #[test]
    fn each_revealed_value_is_checked_once() {
        let mut revealed: Revealed = ["4242", "ada@x.test", "4242", "sk_1", "ada@x.test"]
            .iter()
            .cycle()
            .take(5000)
            .map(|v| Zeroizing::new(v.as_bytes().to_vec()))
            .collect();
        distinct(&mut revealed);
        let left: Vec<&[u8]> = revealed.iter().map(|v| v.as_slice()).collect();
        assert_eq!(left, [&b"4242"[..], b"ada@x.test", b"sk_1"]);
    }

    #[test]
    fn only_final_statuses_are_passed_on() {
        for (code, passed) in [
            (100, false),
            (101, false),
            (199, false),
            (200, true),
            (599, true),
            (600, false),
            (999, false),
        ] {
            assert_eq!(
                is_final(StatusCode::from_u16(code).unwrap()),
                passed,
                "{code}"
            );
        }
    }

    #[test]
    fn the_response_function_sees_the_url_the_caller_sent() {
        let caller = url::Url::parse("https://api.example/v1/pay?card=tok_abc").unwrap();
        let forwarded =
            url::Url::parse("https://api.example/v1/pay?card=4111111111111111").unwrap();
        assert_eq!(shown_url(Hook::Response, &caller, &forwarded), &caller);
        assert_eq!(shown_url(Hook::Request, &caller, &forwarded), &forwarded);
    }

    #[test]
    fn functions_that_do_not_complete_are_502_never_500() {
        use crate::functions::FunctionsError;
        for e in [
            FunctionsError::Internal("the invocation did not stop in time".into()),
            FunctionsError::Internal("the invocation failed".into()),
            FunctionsError::Invalid("x".into()),
            FunctionsError::NotFound("function `f`".into()),
        ] {
            match function_failure("f", e) {
                ConnError::Upstream {
                    status,
                    code,
                    message,
                } => {
                    assert_eq!((status, code), (StatusCode::BAD_GATEWAY, "function_error"));
                    assert!(!message.contains("invocation"), "{message}");
                }
                other => unreachable!("{other:?}"),
            }
        }
    }
}
