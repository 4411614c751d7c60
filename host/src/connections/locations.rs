//! Where values live in an HTTP message, and how to swap them.
//!
//! A connection rule names a location (`{"location": "body", "path": "$.card.number"}`); the
//! proxy reads every value at its rules' locations, asks the vault to detokenize or tokenize them
//! all in one call, and writes the results back. Hence the two phases: [`collect`] finds the
//! values and remembers where each one sits; [`replace`] writes new values to those places.
//!
//! # Threat model
//! Messages come from backends, clients and third parties, so they are hostile input. This module
//! - never puts a value from a message into an error (errors name the location and the shape
//!   found, such as "a number"), and [`Found`]'s `Debug` output hides its value;
//! - changes only the bytes of the values it replaces: the rest of the body (key order,
//!   whitespace, number spelling, other fields) is forwarded byte for byte;
//! - escapes every written value for where it lands (JSON string escaping, form percent-encoding,
//!   header values without line breaks, multipart text without the boundary), so a value can
//!   never add fields, headers or parts;
//! - reads every occurrence: duplicate JSON keys, repeated form fields and repeated headers are
//!   all visited, so a third party that reads "the other one" never sees an unprotected value.
//!
//! # Locations
//! - `header`: a header name (case-insensitive); every header with that name, each value as a
//!   whole. Headers that frame or describe the message (`content-length`, `content-type`,
//!   `host`, hop-by-hop headers…) can't be selected.
//! - `query`: a query parameter name (compared after decoding); every parameter with that name.
//! - `body`, depending on the message's `content-type`:
//!   - JSON (`application/json`, `application/*+json`): a path from the root, `$` followed by
//!     `.name`, `["name"]` or `['name']` (any key), `[N]` (an array element) and `[*]` (every
//!     element of an array), such as `$.items[*].card["number"]`;
//!   - `application/x-www-form-urlencoded` and `multipart/form-data` (text fields only): a field
//!     name such as `card[number]` (Stripe style). A path that starts with `$` and has a single
//!     name segment (`$.number`, `$["card[number]"]`) means that field too, so one rule can serve
//!     both encodings. Conversely, a field name on a JSON body means that top-level key.
//!
//! # Semantics
//! - A location absent from the message is skipped: a missing header, parameter, key or array
//!   element, an empty body, a JSON `null` anywhere along the path, and empty values.
//! - Present but of the wrong shape is an error: a non-string value at the end of a path, or a
//!   path step that meets a value that is not an object (for a name) or an array (for `[N]` and
//!   `[*]`). So is a body location on a body that is neither JSON nor a form, or is compressed.
//! - When several selectors reach the same value it is collected once, for the first of them.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// Longest accepted selector path, in bytes.
const MAX_PATH_LEN: usize = 512;
/// Most segments in a JSON path.
const MAX_SEGMENTS: usize = 32;
/// Deepest JSON nesting read (serde_json refuses deeper documents too).
const MAX_DEPTH: usize = 128;

/// Headers that frame, route or describe the message: rewriting them would change how the
/// message is read, so they can't be locations.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Bytes percent-encoded in form values: everything but `A-Z a-z 0-9 * - . _`, as in the
/// WHATWG `application/x-www-form-urlencoded` serializer (spaces become `%20`).
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The part of an HTTP message a location points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Body,
    Header,
    Query,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Body => "body",
            Place::Header => "header",
            Place::Query => "query",
        })
    }
}

/// A validated location: a [`Place`] and a path within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    place: Place,
    path: String,
    target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `segments` address a JSON body; `field` is the form field the path means, if any.
    Body {
        segments: Vec<Segment>,
        field: Option<String>,
    },
    Header(HeaderName),
    Query(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
    Every,
}

impl Segment {
    fn expects(&self) -> &'static str {
        match self {
            Segment::Key(_) => "an object",
            Segment::Index(_) | Segment::Every => "an array",
        }
    }
}

impl Selector {
    /// Validates a location from a connection's configuration.
    pub fn parse(place: Place, path: &str) -> Result<Self, LocationError> {
        let invalid = |reason| LocationError::InvalidSelector {
            place,
            path: shown(path),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("the path is empty"));
        }
        if path.len() > MAX_PATH_LEN {
            return Err(invalid("the path is longer than 512 bytes"));
        }
        if path.chars().any(char::is_control) {
            return Err(invalid("the path contains a control character"));
        }
        let target = match place {
            Place::Body if path.starts_with('$') => {
                let segments = parse_json_path(path).map_err(invalid)?;
                let field = match segments.as_slice() {
                    [Segment::Key(name)] => Some(name.clone()),
                    _ => None,
                };
                Target::Body { segments, field }
            }
            Place::Body => Target::Body {
                segments: vec![Segment::Key(path.to_owned())],
                field: Some(path.to_owned()),
            },
            Place::Header => {
                let name = HeaderName::from_bytes(path.as_bytes())
                    .map_err(|_| invalid("not a valid header name"))?;
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(invalid(
                        "this header frames or describes the message and can't hold values",
                    ));
                }
                Target::Header(name)
            }
            Place::Query => Target::Query(path.to_owned()),
        };
        Ok(Selector {
            place,
            path: path.to_owned(),
            target,
        })
    }

    pub fn place(&self) -> Place {
        self.place
    }

    /// The path as configured.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The location for messages, such as `body $.card.number`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.place, self.path)
    }
}

/// A path for an error message: escaped, and cut short if long.
fn shown(path: &str) -> String {
    let escaped: String = path.escape_debug().collect();
    match escaped.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// Parses `$` followed by `.name`, `["name"]`, `['name']`, `[N]` and `[*]` segments.
fn parse_json_path(path: &str) -> Result<Vec<Segment>, &'static str> {
    let mut rest = path
        .strip_prefix('$')
        .ok_or("a JSON path starts with `$`")?;
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() {
                return Err("a `.` must be followed by a field name");
            }
            if name == "*" {
                return Err("write `[*]` to select every element of an array");
            }
            if name.contains([']', '\'', '"']) || name.contains(char::is_whitespace) {
                return Err("write a field name with spaces, quotes or brackets as `[\"name\"]`");
            }
            segments.push(Segment::Key(name.to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let (segment, after) = parse_bracket(after)?;
            segments.push(segment);
            rest = after;
        } else {
            return Err("expected `.name`, `[\"name\"]`, `[N]` or `[*]`");
        }
        if segments.len() > MAX_SEGMENTS {
            return Err("a JSON path has at most 32 segments");
        }
    }
    if segments.is_empty() {
        return Err("`$` alone selects the whole body: name a field, such as `$.card.number`");
    }
    Ok(segments)
}

/// Parses what follows a `[`: `*]`, `N]` or a quoted name and `]`; returns the rest.
fn parse_bracket(after: &str) -> Result<(Segment, &str), &'static str> {
    if let Some(rest) = after.strip_prefix("*]") {
        return Ok((Segment::Every, rest));
    }
    if let Some(quote) = after.chars().next().filter(|c| matches!(c, '"' | '\'')) {
        let mut name = String::new();
        let mut chars = after.char_indices().skip(1);
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) if escaped == quote || escaped == '\\' => name.push(escaped),
                    _ => return Err("in a quoted name only the quote and `\\` can be escaped"),
                },
                c if c == quote => {
                    let rest = after[at + 1..]
                        .strip_prefix(']')
                        .ok_or("a quoted name must be followed by `]`")?;
                    return Ok((Segment::Key(name), rest));
                }
                c => name.push(c),
            }
        }
        return Err("a quoted name is not closed");
    }
    let end = after.find(']').ok_or("a `[` is not closed")?;
    let digits = &after[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("write `[*]`, an index such as `[0]`, or a quoted name inside brackets");
    }
    let index = digits.parse().map_err(|_| "an array index is too large")?;
    Ok((Segment::Index(index), &after[end + 1..]))
}

/// Renders path segments for an error message, such as `$.items[0]`.
fn render(segments: &[Segment]) -> String {
    let mut out = String::from("$");
    for segment in segments {
        match segment {
            Segment::Key(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                out.push('.');
                out.push_str(name);
            }
            Segment::Key(name) => {
                out.push_str("[\"");
                for c in name.chars() {
                    if matches!(c, '"' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push_str("\"]");
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
            Segment::Every => out.push_str("[*]"),
        }
    }
    shown(&out)
}

/// Errors of configuration ([`Selector::parse`]) and of reading or writing a message. None
/// contains a value from a message.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("invalid {place} location `{path}`: {reason}")]
    InvalidSelector {
        place: Place,
        path: String,
        reason: &'static str,
    },
    #[error("`{location}` holds {found}, not a string")]
    NotAString {
        location: String,
        found: &'static str,
    },
    #[error("`{location}` expects {expected} at `{at}`, but the message has {found} there")]
    WrongShape {
        location: String,
        at: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{location}` needs a JSON or form body")]
    UnsupportedBody { location: String },
    #[error("`{location}` needs a message with one Content-Type header")]
    ContentTypes { location: String },
    #[error("`{location}` needs an uncompressed body")]
    CompressedBody { location: String },
    #[error("`{location}` can't address a form body: form fields are not nested")]
    NotAFormField { location: String },
    #[error("`{location}` is a file in the multipart body; only text fields are supported")]
    MultipartFile { location: String },
    #[error("`{location}` holds a value that is not UTF-8 text")]
    NotText { location: String },
    #[error("the body is not valid JSON")]
    InvalidJson,
    #[error("the multipart body is malformed")]
    InvalidMultipart,
    #[error("the new value for `{location}` can't be written there")]
    Unwritable { location: String },
    #[error("a replacement does not match the values collected from this message")]
    Mismatch,
}

/// The parts of an HTTP request or response that locations point into.
pub struct Message<'a> {
    pub headers: &'a mut HeaderMap,
    /// The raw query string, without `?`; `None` for a response.
    pub query: Option<&'a mut String>,
    pub body: &'a mut Vec<u8>,
}

/// A value found at a location, and where it sits in the message.
pub struct Found {
    selector: usize,
    value: String,
    slot: Slot,
}

impl Found {
    /// The index, in the slice given to [`collect`], of the selector that found the value.
    pub fn selector(&self) -> usize {
        self.selector
    }

    /// The value, decoded (JSON unescaped, form fields percent-decoded).
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field("selector", &self.selector)
            .field("slot", &self.slot)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Where a value sits: a header value, or the bytes of an encoded value in the query or body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Header {
        name: HeaderName,
        nth: usize,
    },
    Query(Range<usize>),
    Body {
        range: Range<usize>,
        encoding: Encoding,
    },
}

/// How a value is encoded in its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Encoding {
    /// A JSON string literal, quotes included.
    Json,
    /// A form-urlencoded value.
    Form,
    /// Raw UTF-8 (the content of a multipart text part).
    Raw,
}

impl Encoding {
    fn decode(self, raw: &[u8]) -> Option<String> {
        match self {
            Encoding::Json => serde_json::from_slice(raw).ok(),
            Encoding::Form => decode_form(raw),
            Encoding::Raw => std::str::from_utf8(raw).ok().map(str::to_owned),
        }
    }
}

/// Decodes a form-urlencoded name or value (`+` is a space); `None` if not UTF-8.
fn decode_form(raw: &[u8]) -> Option<String> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// Reads every value at `selectors` in `msg`, in selector order, then message order. See the
/// module docs for what is skipped and what is an error. The caller bounds how many values it
/// accepts (a `[*]` over a large array finds many).
pub fn collect(msg: &Message<'_>, selectors: &[Selector]) -> Result<Vec<Found>, LocationError> {
    let mut out = Collector::default();
    let mut body = None;
    for (index, selector) in selectors.iter().enumerate() {
        out.selector = index;
        match &selector.target {
            Target::Header(name) => {
                for (nth, value) in msg.headers.get_all(name).iter().enumerate() {
                    let text =
                        std::str::from_utf8(value.as_bytes()).map_err(|_| not_text(selector))?;
                    let slot = Slot::Header {
                        name: name.clone(),
                        nth,
                    };
                    out.push(slot, text.to_owned());
                }
            }
            Target::Query(name) => {
                if let Some(query) = msg.query.as_deref() {
                    for value in form_values(query.as_bytes(), name, selector) {
                        let (range, text) = value?;
                        out.push(Slot::Query(range), text);
                    }
                }
            }
            Target::Body { segments, field } => {
                if msg.body.is_empty() {
                    continue;
                }
                let parsed = match &mut body {
                    Some(parsed) => parsed,
                    None => body.insert(Body::parse(msg, selector)?),
                };
                parsed.collect(msg.body, selector, segments, field.as_deref(), &mut out)?;
            }
        }
    }
    Ok(out.found)
}

/// Gathers found values, each place once, skipping empty values.
#[derive(Default)]
struct Collector {
    selector: usize,
    found: Vec<Found>,
    seen: HashSet<Slot>,
}

impl Collector {
    fn push(&mut self, slot: Slot, value: String) {
        if !value.is_empty() && self.seen.insert(slot.clone()) {
            self.found.push(Found {
                selector: self.selector,
                value,
                slot,
            });
        }
    }
}

fn not_text(selector: &Selector) -> LocationError {
    LocationError::NotText {
        location: selector.describe(),
    }
}

/// The value ranges and decoded values of the fields called `name` in a form-urlencoded string.
fn form_values<'a>(
    raw: &'a [u8],
    name: &'a str,
    selector: &'a Selector,
) -> impl Iterator<Item = Result<(Range<usize>, String), LocationError>> + 'a {
    form_pairs(raw)
        .filter(move |(key, _)| decode_form(key).as_deref() == Some(name))
        .map(move |(_, value)| {
            let text = raw
                .get(value.clone())
                .and_then(decode_form)
                .ok_or_else(|| not_text(selector))?;
            Ok((value, text))
        })
}

/// The `&`-separated pairs of a form-urlencoded string: each name, and the range of its value.
fn form_pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], Range<usize>)> {
    let mut start = 0;
    raw.split(|&b| b == b'&').filter_map(move |pair| {
        let at = start;
        start += pair.len() + 1;
        if pair.is_empty() {
            return None;
        }
        Some(match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], at + eq + 1..at + pair.len()),
            None => (pair, at + pair.len()..at + pair.len()),
        })
    })
}

/// Whether a message has more than one `Content-Type` header: another reader (the upstream,
/// the caller) may take another of them than the gateway's rules did.
pub fn has_several_content_types(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
}

/// Whether a message's body is encoded (compressed): any coding but `identity` in any of its
/// `Content-Encoding` headers, each a comma-separated list.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|coding| {
            let coding = coding.trim_ascii();
            !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity")
        })
    })
}

/// A body, parsed as far as locations need.
enum Body {
    Json(Node),
    Form,
    Multipart(Vec<Part>),
}

impl Body {
    fn parse(msg: &Message<'_>, selector: &Selector) -> Result<Self, LocationError> {
        if is_encoded(msg.headers) {
            return Err(LocationError::CompressedBody {
                location: selector.describe(),
            });
        }
        if has_several_content_types(msg.headers) {
            return Err(LocationError::ContentTypes {
                location: selector.describe(),
            });
        }
        let unsupported = || LocationError::UnsupportedBody {
            location: selector.describe(),
        };
        let (media_type, params) = content_type(msg.headers).ok_or_else(unsupported)?;
        if media_type == "application/json"
            || (media_type.starts_with("application/") && media_type.ends_with("+json"))
        {
            serde_json::from_slice::<serde::de::IgnoredAny>(msg.body)
                .map_err(|_| LocationError::InvalidJson)?;
            let mut scanner = Scanner {
                bytes: msg.body,
                at: 0,
            };
            Ok(Body::Json(scanner.value(0)?))
        } else if media_type == "application/x-www-form-urlencoded" {
            Ok(Body::Form)
        } else if media_type == "multipart/form-data" {
            let boundary = boundary(&params).ok_or(LocationError::InvalidMultipart)?;
            Ok(Body::Multipart(parse_multipart(msg.body, boundary)?))
        } else {
            Err(unsupported())
        }
    }

    fn collect(
        &self,
        bytes: &[u8],
        selector: &Selector,
        segments: &[Segment],
        field: Option<&str>,
        out: &mut Collector,
    ) -> Result<(), LocationError> {
        let form_field = || {
            field.ok_or_else(|| LocationError::NotAFormField {
                location: selector.describe(),
            })
        };
        match self {
            Body::Json(root) => walk(bytes, root, selector, segments, 0, out),
            Body::Form => {
                for value in form_values(bytes, form_field()?, selector) {
                    let (range, text) = value?;
                    let encoding = Encoding::Form;
                    out.push(Slot::Body { range, encoding }, text);
                }
                Ok(())
            }
            Body::Multipart(parts) => {
                let name = form_field()?;
                for part in parts
                    .iter()
                    .filter(|part| part.name.as_deref() == Some(name))
                {
                    if part.file {
                        return Err(LocationError::MultipartFile {
                            location: selector.describe(),
                        });
                    }
                    let text = bytes
                        .get(part.content.clone())
                        .and_then(|raw| Encoding::Raw.decode(raw))
                        .ok_or_else(|| not_text(selector))?;
                    let range = part.content.clone();
                    let encoding = Encoding::Raw;
                    out.push(Slot::Body { range, encoding }, text);
                }
                Ok(())
            }
        }
    }
}

/// The lowercase media type of a message and its parameters.
fn content_type(headers: &HeaderMap) -> Option<(String, Vec<(String, String)>)> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let (media_type, params) = parse_params(value);
    Some((media_type.to_ascii_lowercase(), params))
}

fn boundary(params: &[(String, String)]) -> Option<&str> {
    params
        .iter()
        .find(|(key, _)| key == "boundary")
        .map(|(_, value)| value.as_str())
        .filter(|b| (1..=70).contains(&b.len()))
}

/// Splits `value; key=value; key="quoted \" value"` into its first item and its parameters
/// (keys lowercased), as in `content-type` and `content-disposition`.
fn parse_params(value: &str) -> (&str, Vec<(String, String)>) {
    let (first, mut rest) = value.split_once(';').unwrap_or((value, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let mut value = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            rest = "";
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        rest = &quoted[at + 1..];
                        break;
                    }
                    c => value.push(c),
                }
            }
        } else {
            let end = after.find(';').unwrap_or(after.len());
            value.push_str(after[..end].trim_end());
            rest = &after[end..];
        }
        params.push((key, value));
    }
    (first.trim(), params)
}

/// A JSON value with the byte ranges of its strings.
enum Node {
    /// A string literal's range, quotes included.
    Str(Range<usize>),
    /// Members as (range of the key literal, value), in document order, duplicates kept.
    Object(Vec<(Range<usize>, Node)>),
    Array(Vec<Node>),
    Null,
    /// A number or a boolean, named for messages.
    Scalar(&'static str),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Object(_) => "an object",
            Node::Array(_) => "an array",
            Node::Null => "null",
            Node::Scalar(kind) => kind,
        }
    }
}

/// Finds the structure of a JSON document that serde_json has already validated.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Result<(), LocationError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(LocationError::InvalidJson)
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, LocationError> {
        if depth > MAX_DEPTH {
            return Err(LocationError::InvalidJson);
        }
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                if self.eat(b'}') {
                    return Ok(Node::Object(members));
                }
                loop {
                    self.skip_whitespace();
                    let key = self.string()?;
                    self.expect(b':')?;
                    members.push((key, self.value(depth + 1)?));
                    if !self.eat(b',') {
                        self.expect(b'}')?;
                        return Ok(Node::Object(members));
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Ok(Node::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        self.expect(b']')?;
                        return Ok(Node::Array(items));
                    }
                }
            }
            Some(b'"') => Ok(Node::Str(self.string()?)),
            Some(b'n') => {
                self.skip_while(|b| b.is_ascii_alphabetic());
                Ok(Node::Null)
            }
            Some(b't' | b'f') => {
                self.skip_while(|b| b.is_ascii_alphabetic());
                Ok(Node::Scalar("a boolean"))
            }
            Some(b'-' | b'0'..=b'9') => {
                self.skip_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'));
                Ok(Node::Scalar("a number"))
            }
            _ => Err(LocationError::InvalidJson),
        }
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
    }

    /// Skips a string literal and returns its range, quotes included.
    fn string(&mut self) -> Result<Range<usize>, LocationError> {
        let start = self.at;
        if self.peek() != Some(b'"') {
            return Err(LocationError::InvalidJson);
        }
        self.at += 1;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(start..self.at);
                }
                Some(b'\\') => self.at += 2,
                Some(_) => self.at += 1,
                None => return Err(LocationError::InvalidJson),
            }
        }
    }
}

/// Follows `segments[depth..]` from `node`, collecting the strings at the end.
fn walk(
    bytes: &[u8],
    node: &Node,
    selector: &Selector,
    segments: &[Segment],
    depth: usize,
    out: &mut Collector,
) -> Result<(), LocationError> {
    let Some(segment) = segments.get(depth) else {
        return match node {
            Node::Str(range) => {
                let value = bytes
                    .get(range.clone())
                    .and_then(|raw| Encoding::Json.decode(raw))
                    .ok_or_else(|| not_text(selector))?;
                let range = range.clone();
                let encoding = Encoding::Json;
                out.push(Slot::Body { range, encoding }, value);
                Ok(())
            }
            Node::Null => Ok(()),
            other => Err(LocationError::NotAString {
                location: selector.describe(),
                found: other.kind(),
            }),
        };
    };
    let mut next = |child: &Node| walk(bytes, child, selector, segments, depth + 1, out);
    match (segment, node) {
        (_, Node::Null) => Ok(()),
        (Segment::Key(name), Node::Object(members)) => {
            for (key, child) in members {
                if key_is(bytes, key, name) {
                    next(child)?;
                }
            }
            Ok(())
        }
        (Segment::Index(index), Node::Array(items)) => items.get(*index).map_or(Ok(()), next),
        (Segment::Every, Node::Array(items)) => items.iter().try_for_each(next),
        (segment, node) => Err(LocationError::WrongShape {
            location: selector.describe(),
            at: render(segments.get(..depth).unwrap_or_default()),
            expected: segment.expects(),
            found: node.kind(),
        }),
    }
}

/// Whether the key literal at `range` spells `name`.
fn key_is(bytes: &[u8], range: &Range<usize>, name: &str) -> bool {
    let Some(literal) = bytes.get(range.clone()) else {
        return false;
    };
    match literal.get(1..literal.len().saturating_sub(1)) {
        Some(inner) if !inner.contains(&b'\\') => inner == name.as_bytes(),
        _ => Encoding::Json.decode(literal).as_deref() == Some(name),
    }
}

/// A part of a `multipart/form-data` body.
struct Part {
    name: Option<String>,
    file: bool,
    content: Range<usize>,
}

/// Splits a multipart body (RFC 2046, RFC 7578) into its parts.
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, LocationError> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let malformed = || LocationError::InvalidMultipart;
    // The first delimiter may open the body, without the line break before it.
    let mut at = match body.strip_prefix(&delimiter[2..]) {
        Some(_) => delimiter.len() - 2,
        None => find(body, &delimiter).ok_or_else(malformed)? + delimiter.len(),
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(at..).ok_or_else(malformed)?;
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let padding = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let start = at + padding + 2;
        if rest.get(padding..padding + 2) != Some(b"\r\n".as_slice()) {
            return Err(malformed());
        }
        let part = body.get(start..).ok_or_else(malformed)?;
        let end = start + find(part, &delimiter).ok_or_else(malformed)?;
        let part = body.get(start..end).ok_or_else(malformed)?;
        let (head, content_start) = match part.strip_prefix(b"\r\n") {
            Some(_) => (&part[..0], 2),
            None => {
                let head_end = find(part, b"\r\n\r\n").ok_or_else(malformed)?;
                (&part[..head_end], head_end + 4)
            }
        };
        let (name, file) = disposition(head);
        parts.push(Part {
            name,
            file,
            content: start + content_start..end,
        });
        at = end + delimiter.len();
    }
}

/// The field name and whether the part is a file, from a part's `content-disposition`.
fn disposition(head: &[u8]) -> (Option<String>, bool) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (None, false);
    };
    for line in head.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let (kind, params) = parse_params(value);
        if !kind.eq_ignore_ascii_case("form-data") {
            return (None, false);
        }
        let name = params.iter().find(|(key, _)| key == "name");
        let file = params.iter().any(|(key, _)| key.starts_with("filename"));
        return (name.map(|(_, name)| name.clone()), file);
    }
    (None, false)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Writes new values where [`collect`] found the old ones. `msg` must not have changed since,
/// and `selectors` must be the same slice. All edits are checked before any is made, so on an
/// error the message is unchanged. A `content-length` header, if present, is updated.
pub fn replace(
    msg: &mut Message<'_>,
    selectors: &[Selector],
    edits: impl IntoIterator<Item = (Found, String)>,
) -> Result<(), LocationError> {
    let mut headers = Vec::new();
    let mut query = Vec::new();
    let mut body = Vec::new();
    let mut slots = HashSet::new();
    for (found, new) in edits {
        let selector = selectors
            .get(found.selector)
            .ok_or(LocationError::Mismatch)?;
        let unwritable = || LocationError::Unwritable {
            location: selector.describe(),
        };
        if !slots.insert(found.slot.clone()) {
            return Err(LocationError::Mismatch);
        }
        match found.slot {
            Slot::Header { name, nth } => {
                let current = msg.headers.get_all(&name).iter().nth(nth);
                if current.map(HeaderValue::as_bytes) != Some(found.value.as_bytes()) {
                    return Err(LocationError::Mismatch);
                }
                let mut value =
                    HeaderValue::from_bytes(new.as_bytes()).map_err(|_| unwritable())?;
                value.set_sensitive(true);
                headers.push((name, nth, value));
            }
            Slot::Query(range) => {
                let encoded = utf8_percent_encode(&new, FORM_VALUE).to_string();
                query.push(Splice {
                    range,
                    old: found.value,
                    new: encoded.into_bytes(),
                    encoding: Encoding::Form,
                });
            }
            Slot::Body { range, encoding } => {
                let new = match encoding {
                    Encoding::Json => serde_json::to_vec(&new).map_err(|_| unwritable())?,
                    Encoding::Form => utf8_percent_encode(&new, FORM_VALUE)
                        .to_string()
                        .into_bytes(),
                    Encoding::Raw => {
                        let (_, params) =
                            content_type(msg.headers).ok_or(LocationError::Mismatch)?;
                        let boundary = boundary(&params).ok_or(LocationError::Mismatch)?;
                        if new.contains(&format!("--{boundary}")) {
                            return Err(unwritable());
                        }
                        new.into_bytes()
                    }
                };
                body.push(Splice {
                    range,
                    old: found.value,
                    new,
                    encoding,
                });
            }
        }
    }

    let new_query = match (&msg.query, query.is_empty()) {
        (_, true) => None,
        (None, false) => return Err(LocationError::Mismatch),
        (Some(current), false) => {
            let mut bytes = current.as_bytes().to_vec();
            checked(&bytes, &mut query)?;
            apply(&mut bytes, query);
            Some(String::from_utf8(bytes).map_err(|_| LocationError::Mismatch)?)
        }
    };
    checked(msg.body, &mut body)?;

    // Everything is checked: from here on nothing fails.
    for (name, nth, value) in headers {
        if let Entry::Occupied(mut entry) = msg.headers.entry(name)
            && let Some(slot) = entry.iter_mut().nth(nth)
        {
            *slot = value;
        }
    }
    if let (Some(query), Some(new_query)) = (msg.query.as_deref_mut(), new_query) {
        *query = new_query;
    }
    if !body.is_empty() {
        apply(msg.body, body);
        if msg.headers.contains_key(header::CONTENT_LENGTH) {
            msg.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(msg.body.len()));
        }
    }
    Ok(())
}

/// A planned replacement of `range` (holding `old`, encoded) by the encoded `new`.
struct Splice {
    range: Range<usize>,
    old: String,
    new: Vec<u8>,
    encoding: Encoding,
}

/// Sorts `splices` from the end of `bytes` and checks that each still holds its old value and
/// that none overlap.
fn checked(bytes: &[u8], splices: &mut [Splice]) -> Result<(), LocationError> {
    splices.sort_by_key(|splice| std::cmp::Reverse(splice.range.start));
    let mut limit = bytes.len();
    for splice in splices.iter() {
        let current = bytes.get(splice.range.clone());
        if splice.range.end > limit
            || current
                .and_then(|raw| splice.encoding.decode(raw))
                .as_deref()
                != Some(splice.old.as_str())
        {
            return Err(LocationError::Mismatch);
        }
        limit = splice.range.start;
    }
    Ok(())
}

/// Applies splices sorted and verified by [`checked`].
fn apply(bytes: &mut Vec<u8>, splices: Vec<Splice>) {
    for splice in splices {
        bytes.splice(splice.range, splice.new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(path: &str) -> Selector {
        selector(Place::Body, path)
    }

    fn selector(place: Place, path: &str) -> Selector {
        match Selector::parse(place, path) {
            Ok(selector) => selector,
            Err(e) => unreachable!("{e}"),
        }
    }

    /// An owned message to borrow [`Message`]s from.
    struct Owned {
        headers: HeaderMap,
        query: String,
        body: Vec<u8>,
    }

    impl Owned {
        fn new(content_type: &str, body: &str) -> Self {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(content_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            Owned {
                headers,
                query: String::new(),
                body: body.as_bytes().to_vec(),
            }
        }

        fn json(body: &str) -> Self {
            Self::new("application/json", body)
        }

        fn message(&mut self) -> Message<'_> {
            Message {
                headers: &mut self.headers,
                query: Some(&mut self.query),
                body: &mut self.body,
            }
        }

        fn collect(&mut self, selectors: &[Selector]) -> Result<Vec<Found>, LocationError> {
            collect(&self.message(), selectors)
        }

        /// Collects, then replaces each value by `f(value)`.
        fn map(
            &mut self,
            selectors: &[Selector],
            f: impl Fn(&str) -> String,
        ) -> Result<Vec<String>, LocationError> {
            let found = self.collect(selectors)?;
            let values = found.iter().map(|x| x.value().to_owned()).collect();
            let edits: Vec<_> = found
                .into_iter()
                .map(|x| {
                    let new = f(x.value());
                    (x, new)
                })
                .collect();
            replace(&mut self.message(), selectors, edits)?;
            Ok(values)
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap_or("<not utf-8>")
        }
    }

    fn values(found: &[Found]) -> Vec<(usize, &str)> {
        found.iter().map(|x| (x.selector(), x.value())).collect()
    }

    #[test]
    fn parses_json_paths() {
        let key = |name: &str| Segment::Key(name.to_owned());
        let cases = [
            ("$.a", vec![key("a")]),
            (
                "$.a.b[*].c",
                vec![key("a"), key("b"), Segment::Every, key("c")],
            ),
            (
                "$.items[0].card",
                vec![key("items"), Segment::Index(0), key("card")],
            ),
            (
                "$.card-number.@type",
                vec![key("card-number"), key("@type")],
            ),
            (
                r#"$["odd key"]['it\'s']["a\"b\\c"][12]"#,
                vec![
                    key("odd key"),
                    key("it's"),
                    key("a\"b\\c"),
                    Segment::Index(12),
                ],
            ),
            (r#"$[""]"#, vec![key("")]),
        ];
        for (path, expected) in cases {
            let parsed = body(path);
            assert!(
                matches!(&parsed.target, Target::Body { segments, .. } if *segments == expected),
                "{path}"
            );
            assert_eq!(parsed.describe(), format!("body {path}"));
        }
    }

    #[test]
    fn form_field_meaning_of_body_paths() {
        let plain = body("card[number]");
        assert!(matches!(&plain.target,
            Target::Body { segments, field: Some(f) }
                if f == "card[number]" && segments == &[Segment::Key("card[number]".into())]));
        let dollar = body("$.number");
        assert!(matches!(&dollar.target, Target::Body { field: Some(f), .. } if f == "number"));
        let nested = body("$.card.number");
        assert!(matches!(&nested.target, Target::Body { field: None, .. }));
    }

    #[test]
    fn rejects_invalid_selectors_with_a_reason() {
        let bad = [
            (Place::Body, ""),
            (Place::Body, "$"),
            (Place::Body, "$."),
            (Place::Body, "$.a..b"),
            (Place::Body, "$.*"),
            (Place::Body, "$a"),
            (Place::Body, "$.a["),
            (Place::Body, "$.a[x]"),
            (Place::Body, "$.a[-1]"),
            (Place::Body, "$.a[]"),
            (Place::Body, "$['a'"),
            (Place::Body, "$['a']x"),
            (Place::Body, r#"$["a\n"]"#),
            (Place::Body, "$.a b"),
            (Place::Body, "$[99999999999999999999999]"),
            (Place::Body, "field\u{0}"),
            (Place::Header, "bad header"),
            (Place::Header, "x:y"),
            (Place::Header, "Content-Length"),
            (Place::Header, "host"),
            (Place::Query, "a\nb"),
        ];
        for (place, path) in bad {
            let result = Selector::parse(place, path);
            assert!(
                matches!(&result, Err(LocationError::InvalidSelector { place: p, .. }) if *p == place),
                "{place} {path:?}: {result:?}"
            );
        }
        let long = format!("$.{}", "a".repeat(600));
        assert!(Selector::parse(Place::Body, &long).is_err());
        let deep = format!("${}", ".a".repeat(33));
        assert!(Selector::parse(Place::Body, &deep).is_err());
        let message = Selector::parse(Place::Body, "$.a[x]")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "invalid body location `$.a[x]`: write `[*]`, an index such as `[0]`, or a quoted name inside brackets"
            )
        );
    }

    #[test]
    fn place_serde() {
        let place: Result<Place, _> = serde_json::from_str("\"header\"");
        assert!(matches!(place, Ok(Place::Header)));
        assert!(serde_json::from_str::<Place>("\"cookie\"").is_err());
        assert_eq!(body("$.a").place(), Place::Body);
        assert_eq!(body("$.a").path(), "$.a");
    }

    #[test]
    fn json_nested_index_wildcard_and_quoted_keys() -> Result<(), LocationError> {
        let mut msg = Owned::json(
            r#"{"card": {"number": "tok_1", "cvc": "123"},
                "items": [{"pan": "tok_2"}, {"pan": "tok_3"}, {"other": 1}],
                "odd key": {"it's": "tok_4"},
                "list": ["tok_5", "tok_6"]}"#,
        );
        let selectors = [
            body("$.card.number"),
            body("$.items[*].pan"),
            body(r#"$["odd key"]['it\'s']"#),
            body("$.list[1]"),
        ];
        let found = msg.collect(&selectors)?;
        assert_eq!(
            values(&found),
            [
                (0, "tok_1"),
                (1, "tok_2"),
                (1, "tok_3"),
                (2, "tok_4"),
                (3, "tok_6")
            ]
        );
        Ok(())
    }

    #[test]
    fn json_replacement_keeps_everything_else() -> Result<(), LocationError> {
        let original = r#"{ "z": 1.50, "card": {"number":"tok_1" , "a": [1e3]},
            "items":[{"pan":"tok_2"},{"pan":"tok_3"}], "big": 123456789012345678901234567890 }"#;
        let mut msg = Owned::json(original);
        msg.map(&[body("$.card.number"), body("$.items[*].pan")], |v| {
            format!("plain-{v}")
        })?;
        assert_eq!(
            msg.text(),
            original
                .replace("\"tok_1\"", "\"plain-tok_1\"")
                .replace("\"tok_2\"", "\"plain-tok_2\"")
                .replace("\"tok_3\"", "\"plain-tok_3\"")
        );
        Ok(())
    }

    #[test]
    fn json_values_are_unescaped_and_escaped() -> Result<(), LocationError> {
        let mut msg = Owned::json(r#"{"a": "tok\u005f1\"\\", "k\u0065y": "tok_2"}"#);
        let seen = msg.map(&[body("$.a"), body("$.key")], |v| match v {
            "tok_2" => "é \u{1F600}".into(),
            _ => "he said \"hi\" & \\ \n\t\u{7} </script> =+%".into(),
        })?;
        assert_eq!(seen, ["tok_1\"\\", "tok_2"]);
        let parsed: serde_json::Value = serde_json::from_slice(&msg.body).unwrap_or_default();
        assert_eq!(parsed["a"], "he said \"hi\" & \\ \n\t\u{7} </script> =+%");
        assert_eq!(parsed["key"], "é \u{1F600}");
        Ok(())
    }

    #[test]
    fn json_absent_and_null_locations_are_skipped() -> Result<(), LocationError> {
        let mut msg =
            Owned::json(r#"{"a": null, "b": {"c": null}, "list": [], "n": [null, "x"], "e": ""}"#);
        let selectors = [
            body("$.missing"),
            body("$.missing.deeper[*]"),
            body("$.a.b"),
            body("$.b.c"),
            body("$.b.d"),
            body("$.list[*].x"),
            body("$.list[3]"),
            body("$.a[*]"),
            body("$.n[*]"),
            body("$.e"),
        ];
        assert_eq!(values(&msg.collect(&selectors)?), [(8, "x")]);
        let mut empty = Owned::json("");
        assert!(empty.collect(&selectors)?.is_empty());
        Ok(())
    }

    #[test]
    fn json_wrong_shapes_are_errors_naming_the_location() {
        let mut msg = Owned::json(
            r#"{"n": 4111111111111111, "o": {"x": "secret"}, "s": "secret", "arr": ["secret"], "t": true}"#,
        );
        let cases = [
            ("$.n", "`body $.n` holds a number, not a string"),
            ("$.o", "`body $.o` holds an object, not a string"),
            ("$.arr", "`body $.arr` holds an array, not a string"),
            ("$.t", "`body $.t` holds a boolean, not a string"),
            (
                "$.s.x",
                "`body $.s.x` expects an object at `$.s`, but the message has a string there",
            ),
            (
                "$.o[*]",
                "`body $.o[*]` expects an array at `$.o`, but the message has an object there",
            ),
            (
                "$.arr[0].k",
                "`body $.arr[0].k` expects an object at `$.arr[0]`, but the message has a string there",
            ),
            (
                "$.n[0]",
                "`body $.n[0]` expects an array at `$.n`, but the message has a number there",
            ),
        ];
        for (path, expected) in cases {
            let message = msg.collect(&[body(path)]).err().map(|e| e.to_string());
            assert_eq!(message.as_deref(), Some(expected), "{path}");
            assert!(!expected.contains("secret") && !expected.contains("4111"));
        }
    }

    #[test]
    fn json_duplicate_keys_are_all_visited_and_overlaps_collected_once() -> Result<(), LocationError>
    {
        let mut msg = Owned::json(r#"{"a": "one", "a": "two", "l": ["x", "y"]}"#);
        let selectors = [body("$.a"), body("$.l[1]"), body("$.l[*]")];
        let found = msg.collect(&selectors)?;
        assert_eq!(values(&found), [(0, "one"), (0, "two"), (1, "y"), (2, "x")]);
        msg.map(&selectors, str::to_uppercase)?;
        assert_eq!(msg.text(), r#"{"a": "ONE", "a": "TWO", "l": ["X", "Y"]}"#);
        Ok(())
    }

    #[test]
    fn json_variants_and_invalid_bodies() -> Result<(), LocationError> {
        let mut problem = Owned::new(
            "application/problem+json; charset=utf-8",
            r#"{"detail": "tok"}"#,
        );
        assert_eq!(values(&problem.collect(&[body("detail")])?), [(0, "tok")]);
        for bad in [r#"{"a": "x""#, "{'a': 1}", "{\"a\": \"x\"} trailing", "   "] {
            let mut msg = Owned::json(bad);
            assert!(
                matches!(msg.collect(&[body("$.a")]), Err(LocationError::InvalidJson)),
                "{bad}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Owned::json(&deep).collect(&[body("$.a")]).is_err());
        Ok(())
    }

    #[test]
    fn body_needs_a_supported_uncompressed_content_type() -> Result<(), LocationError> {
        for content_type in ["text/plain", "application/octet-stream", "application/xml"] {
            let mut msg = Owned::new(content_type, r#"{"a": "x"}"#);
            let message = msg.collect(&[body("$.a")]).err().map(|e| e.to_string());
            assert_eq!(
                message.as_deref(),
                Some("`body $.a` needs a JSON or form body")
            );
        }
        let mut none = Owned::json(r#"{"a": "x"}"#);
        none.headers.clear();
        assert!(matches!(
            none.collect(&[body("$.a")]),
            Err(LocationError::UnsupportedBody { .. })
        ));
        let mut gzip = Owned::json(r#"{"a": "x"}"#);
        gzip.headers
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(
            gzip.collect(&[body("$.a")]),
            Err(LocationError::CompressedBody { .. })
        ));
        for codings in [
            &["identity", "gzip"][..],
            &["identity, br"],
            &["gzip, identity"],
        ] {
            let mut encoded = Owned::json(r#"{"a": "x"}"#);
            for coding in codings {
                encoded
                    .headers
                    .append(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            }
            assert!(
                matches!(
                    encoded.collect(&[body("$.a")]),
                    Err(LocationError::CompressedBody { .. })
                ),
                "{codings:?}"
            );
        }
        let mut two = Owned::json(r#"{"a": "x"}"#);
        two.headers.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(matches!(
            two.collect(&[body("$.a")]),
            Err(LocationError::ContentTypes { .. })
        ));
        let mut identity = Owned::json(r#"{"a": "x"}"#);
        identity.headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(identity.collect(&[body("$.a")])?.len(), 1);
        // Without body selectors the body is never read.
        let mut other = Owned::new("text/plain", "not json");
        assert!(other.collect(&[selector(Place::Query, "q")])?.is_empty());
        Ok(())
    }

    #[test]
    fn form_bodies_round_trip_special_characters() -> Result<(), LocationError> {
        let original = "amount=100&card%5Bnumber%5D=tok%5F1&card[cvc]=tok+2&flag&&x=a%20b";
        let mut msg = Owned::new("application/x-www-form-urlencoded", original);
        let selectors = [body("card[number]"), body("$['card[cvc]']"), body("flag")];
        let seen = msg.map(&selectors, |v| match v {
            "tok_1" => "4111 1111&x=1+%".into(),
            _ => "é\"'<>".into(),
        })?;
        assert_eq!(seen, ["tok_1", "tok 2"]);
        assert_eq!(
            msg.text(),
            "amount=100&card%5Bnumber%5D=4111%201111%26x%3D1%2B%25\
             &card[cvc]=%C3%A9%22%27%3C%3E&flag&&x=a%20b"
        );
        let found = msg.collect(&selectors)?;
        assert_eq!(values(&found), [(0, "4111 1111&x=1+%"), (1, "é\"'<>")]);
        Ok(())
    }

    #[test]
    fn form_bodies_refuse_nested_paths_and_repeat_fields() -> Result<(), LocationError> {
        let mut msg = Owned::new("application/x-www-form-urlencoded", "a=1&a=2&b=3");
        assert_eq!(values(&msg.collect(&[body("$.a")])?), [(0, "1"), (0, "2")]);
        let message = msg.collect(&[body("$.a.b")]).err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some("`body $.a.b` can't address a form body: form fields are not nested")
        );
        let mut latin1 = Owned::new("application/x-www-form-urlencoded", "a=%FF");
        assert!(matches!(
            latin1.collect(&[body("a")]),
            Err(LocationError::NotText { .. })
        ));
        Ok(())
    }

    #[test]
    fn query_round_trip() -> Result<(), LocationError> {
        let mut msg = Owned::json("");
        msg.query = "card=tok_1&other=%2B1&card=&name=J%C3%B3+Doe".into();
        let selectors = [
            selector(Place::Query, "card"),
            selector(Place::Query, "name"),
        ];
        let seen = msg.map(&selectors, |v| format!("{v}&=+% ü"))?;
        assert_eq!(seen, ["tok_1", "Jó Doe"]);
        assert_eq!(
            msg.query,
            "card=tok_1%26%3D%2B%25%20%C3%BC&other=%2B1&card=&name=J%C3%B3%20Doe%26%3D%2B%25%20%C3%BC"
        );
        // A response has no query: query locations are skipped.
        let mut headers = HeaderMap::new();
        let mut bytes = Vec::new();
        let response = Message {
            headers: &mut headers,
            query: None,
            body: &mut bytes,
        };
        assert!(collect(&response, &selectors)?.is_empty());
        Ok(())
    }

    #[test]
    fn headers_match_case_insensitively_and_every_value() -> Result<(), LocationError> {
        let mut msg = Owned::json("");
        msg.headers
            .append("x-card", HeaderValue::from_static("tok_1"));
        msg.headers
            .append("X-Card", HeaderValue::from_static("tok_2"));
        msg.headers
            .append("x-other", HeaderValue::from_static("keep"));
        let selectors = [selector(Place::Header, "X-CARD")];
        let seen = msg.map(&selectors, |v| format!("plain {v} é"))?;
        assert_eq!(seen, ["tok_1", "tok_2"]);
        let written: Vec<_> = msg.headers.get_all("x-card").iter().collect();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0].as_bytes(), "plain tok_1 é".as_bytes());
        assert_eq!(written[1].as_bytes(), "plain tok_2 é".as_bytes());
        assert!(written[0].is_sensitive());
        assert_eq!(
            msg.headers.get("x-other"),
            Some(&HeaderValue::from_static("keep"))
        );
        Ok(())
    }

    #[test]
    fn header_values_cannot_inject_lines() -> Result<(), LocationError> {
        let mut msg = Owned::json("");
        msg.headers
            .insert("x-card", HeaderValue::from_static("tok_1"));
        let selectors = [selector(Place::Header, "x-card")];
        let result = msg.map(&selectors, |_| "a\r\nx-evil: 1".into());
        assert!(matches!(result, Err(LocationError::Unwritable { .. })));
        assert_eq!(
            msg.headers.get("x-card"),
            Some(&HeaderValue::from_static("tok_1"))
        );
        Ok(())
    }

    #[test]
    fn multipart_text_fields() -> Result<(), LocationError> {
        let original = "preamble\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"card[number]\"\r\n\r\n\
            tok_1\r\n--XyZ \r\n\
            content-disposition: form-data; name=\"note\"\r\ncontent-type: text/plain\r\n\r\n\
            keep\r\nme\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n\
            binary\r\n--XyZ--\r\nepilogue";
        let mut msg = Owned::new("multipart/form-data; boundary=\"XyZ\"", original);
        msg.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(original.len()));
        let selectors = [body("$['card[number]']"), body("note")];
        let seen = msg.map(&selectors, |v| match v {
            "tok_1" => "4111 \"é\"".into(),
            other => other.to_owned(),
        })?;
        assert_eq!(seen, ["tok_1", "keep\r\nme"]);
        assert_eq!(msg.text(), original.replace("tok_1", "4111 \"é\""));
        assert_eq!(
            msg.headers.get(header::CONTENT_LENGTH),
            Some(&HeaderValue::from(msg.body.len()))
        );
        assert!(matches!(
            msg.collect(&[body("file")]),
            Err(LocationError::MultipartFile { .. })
        ));
        assert!(matches!(
            msg.collect(&[body("$.a.b")]),
            Err(LocationError::NotAFormField { .. })
        ));
        // A value holding the boundary could forge a part.
        let forged = msg.map(&[body("note")], |_| {
            "x\r\n--XyZ\r\nContent-Disposition: form-data; name=\"admin\"\r\n\r\n1".into()
        });
        assert!(matches!(forged, Err(LocationError::Unwritable { .. })));
        Ok(())
    }

    #[test]
    fn malformed_multipart_is_an_error() {
        for bad in [
            "no delimiter",
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx",
        ] {
            let mut msg = Owned::new("multipart/form-data; boundary=b", bad);
            assert!(matches!(
                msg.collect(&[body("a")]),
                Err(LocationError::InvalidMultipart)
            ));
        }
        let mut no_boundary = Owned::new("multipart/form-data", "--b--");
        assert!(no_boundary.collect(&[body("a")]).is_err());
    }

    #[test]
    fn replace_checks_before_changing_anything() -> Result<(), LocationError> {
        let mut msg = Owned::json(r#"{"a": "x", "b": "y"}"#);
        msg.headers.insert("x-t", HeaderValue::from_static("h"));
        let selectors = [body("$.a"), selector(Place::Header, "x-t"), body("$.b")];
        let found = msg.collect(&selectors)?;
        // The message changed since collecting: nothing is written.
        msg.body = br#"{"a": "z", "b": "y"}"#.to_vec();
        let edits = found.into_iter().map(|x| (x, "new".to_owned()));
        assert!(matches!(
            replace(&mut msg.message(), &selectors, edits),
            Err(LocationError::Mismatch)
        ));
        assert_eq!(msg.headers.get("x-t"), Some(&HeaderValue::from_static("h")));
        assert_eq!(msg.text(), r#"{"a": "z", "b": "y"}"#);
        // A selector slice that does not match the values is refused.
        let found = msg.collect(&selectors)?;
        let edits = found.into_iter().map(|x| (x, "new".to_owned()));
        assert!(matches!(
            replace(&mut msg.message(), &selectors[..1], edits),
            Err(LocationError::Mismatch)
        ));
        Ok(())
    }

    #[test]
    fn debug_output_hides_values() -> Result<(), LocationError> {
        let mut msg = Owned::json(r#"{"a": "secret-value"}"#);
        let found = msg.collect(&[body("$.a")])?;
        let debug = format!("{found:?}");
        assert!(!debug.contains("secret-value") && debug.contains("redacted"));
        Ok(())
    }
}
