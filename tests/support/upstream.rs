//! A real HTTP server playing the third party of a connection: it binds `127.0.0.1:0`, records
//! every request it receives, and answers with a configurable [`Reply`] (per path, or a default).

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, exactly as received (`/base/v1/charges?x=1`).
    pub uri: String,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }

    /// Decoded query parameters.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header as one text, for "never contains" assertions.
    pub fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("upstream body is not JSON ({e}): {}", self.text()))
    }

    /// The body decoded as `application/x-www-form-urlencoded`.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    /// Everything received (request line, headers, body) as one text.
    pub fn all_text(&self) -> String {
        format!(
            "{} {}\n{}\n{}",
            self.method,
            self.uri,
            self.headers_text(),
            self.text()
        )
    }
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (to provoke timeouts).
    pub delay: Option<Duration>,
    /// Answer with the request's own body and content type (status `status`).
    pub echo: bool,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::json_text(status, &body.to_string())
    }

    /// A JSON reply written exactly as given (its escapes and spacing kept).
    pub fn json_text(status: u16, text: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: text.as_bytes().to_vec(),
            delay: None,
            echo: false,
        }
    }

    /// A plain-text reply.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delay: None,
            echo: false,
        }
    }

    /// Answers 200 with the request's body and content type.
    pub fn echo() -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
            echo: true,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    by_path: HashMap<String, Reply>,
    default: Option<Reply>,
}

/// The running third party. Stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts a server answering `200 {"ok": true}` until told otherwise.
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, inner, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("upstream lock").received.clone()
    }

    /// The last request received (panics if none).
    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received no request")
    }

    /// The number of requests received so far.
    pub fn count(&self) -> usize {
        self.inner.lock().expect("upstream lock").received.len()
    }

    /// Answers every request whose path has no reply of its own with `reply`.
    pub fn reply_with(&self, reply: Reply) {
        self.inner.lock().expect("upstream lock").default = Some(reply);
    }

    /// Answers requests to exactly `path` (without query) with `reply`.
    pub fn reply_on(&self, path: &str, reply: Reply) {
        self.inner
            .lock()
            .expect("upstream lock")
            .by_path
            .insert(path.to_string(), reply);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_string());
    let received = Received {
        method: parts.method.to_string(),
        uri,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let reply = {
        let mut inner = inner.lock().expect("upstream lock");
        let reply = inner
            .by_path
            .get(received.path())
            .or(inner.default.as_ref())
            .cloned()
            .unwrap_or_else(|| Reply::json(200, serde_json::json!({"ok": true})));
        inner.received.push(received.clone());
        reply
    };
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut response = Response::new(Body::from(if reply.echo {
        received.body.clone()
    } else {
        reply.body.clone()
    }));
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("reply status");
    let headers = response.headers_mut();
    if reply.echo
        && let Some(ct) = received.header("content-type")
    {
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).expect("content type"),
        );
    }
    for (n, v) in &reply.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    response
}

/// A local port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}
