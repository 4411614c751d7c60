//! Connections over TLS end to end: a real server calling a real HTTPS third party on a local
//! port. Every certificate and key is generated at test time (a private CA, a server
//! certificate for `127.0.0.1` and `localhost`, a client CA and the gateway's client
//! certificate); none is committed. The third party speaks TLS only, so whatever it records
//! crossed the wire encrypted, and it records the handshakes it refused.

use crate::connections::put_secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strongroom_tests::{TestApp, assert_error};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const ADA_CARD: &str = "4242424242424242";

// ---- certificates ------------------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by a [`Ca`], with its key.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        // `127.0.0.1` becomes an IP address name, `localhost` a DNS name
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert, key }
    }

    /// A certificate for the test's HTTPS server: `127.0.0.1` and `localhost`.
    fn server_leaf(&self) -> Leaf {
        self.issue(
            "test upstream",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (for mutual TLS).
    fn client_leaf(&self, common_name: &str) -> Leaf {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `leaf`; with `client_ca`, clients must present a
/// certificate it issued.
fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
    };
    let mut config = builder
        .with_single_cert(leaf.chain(), leaf.private_key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

// ---- an HTTPS third party ---------------------------------------------------------------

/// The TLS side of one accepted connection.
#[derive(Debug, Clone)]
struct Peer {
    /// The client certificate presented (DER), if any.
    client_cert: Option<Vec<u8>>,
}

/// One request as the HTTPS upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    body: Value,
    client_cert: Option<Vec<u8>>,
}

#[derive(Default)]
struct Log {
    requests: Vec<Seen>,
    handshakes: usize,
    /// Why each refused handshake failed.
    refused: Vec<String>,
}

/// Completed handshakes, fed by the accept loop, as an [`axum::serve::Listener`].
struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer { client_cert: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// A third party that speaks HTTPS only and answers `200 {"ok": true}`. Stops when dropped.
struct TlsUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TlsUpstream {
    async fn start(config: rustls::ServerConfig) -> TlsUpstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let handshakes = log.clone();
        // each handshake on its own task, so a stalled one holds up no other
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (acceptor, tx, log) = (acceptor.clone(), tx.clone(), handshakes.clone());
                tokio::spawn(async move {
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    match outcome {
                        Ok(Ok(tls)) => {
                            let client_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            log.lock().unwrap().handshakes += 1;
                            let _ = tx.send((tls, Peer { client_cert })).await;
                        }
                        Ok(Err(e)) => log.lock().unwrap().refused.push(e.to_string()),
                        Err(_) => log.lock().unwrap().refused.push("timed out".into()),
                    }
                });
            }
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(log.clone())
            .into_make_service_with_connect_info::<Peer>();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(TlsListener { incoming: rx }, app).await;
        });
        TlsUpstream {
            addr,
            log,
            tasks: vec![accept, serve],
        }
    }

    /// `https://127.0.0.1:PORT`.
    fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    fn handshakes(&self) -> usize {
        self.log.lock().unwrap().handshakes
    }

    fn refused(&self) -> Vec<String> {
        self.log.lock().unwrap().refused.clone()
    }

    /// Waits (the server side learns of a refused handshake a moment after the client) until
    /// at least `n` handshakes were refused; returns why they were.
    async fn wait_for_refused(&self, n: usize) -> Vec<String> {
        for _ in 0..100 {
            if self.refused().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = self.refused();
        assert!(
            refused.len() >= n,
            "expected {n} refused handshake(s), saw {refused:?}"
        );
        refused
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn record(
    axum::extract::State(log): axum::extract::State<Arc<Mutex<Log>>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
    req: axum::extract::Request,
) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        client_cert: peer.client_cert,
    };
    log.lock().unwrap().requests.push(seen);
    axum::Json(json!({"ok": true, "id": "ch_tls"}))
}

// ---- the vault side ----------------------------------------------------------------------

/// A server that may reach 127.0.0.1 (https needs no plain-http allowance).
async fn spawn_app() -> TestApp {
    TestApp::spawn_with(|s| s.egress_allow_networks = "127.0.0.1/32".into()).await
}

/// The payments vault with Ada's card; returns the card's token.
async fn card_token(app: &TestApp) -> String {
    app.payments_vault().await;
    let (status, body) = app
        .post(
            "/v1/vaults/payments/tables/customers/records",
            json!({"records": [{"fields": {"name": "Ada Lovelace", "card_number": ADA_CARD}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["records"][0]["tokens"]["card_number"]
        .as_str()
        .unwrap_or_else(|| panic!("no card token: {body}"))
        .to_string()
}

/// Cedar letting every connection of `names` detokenize, and role `app` call it.
async fn set_policies(app: &TestApp, names: &[&str]) {
    let cedar: String = names
        .iter()
        .map(|c| {
            format!(
                r#"@id("{c}-detok")
permit(principal == Strongroom::Connection::"{c}", action == Strongroom::Action::"detokenize", resource);
@id("{c}-calls")
permit(principal in Strongroom::Role::"app", action == Strongroom::Action::"call_connection", resource == Strongroom::Connection::"{c}");
"#
            )
        })
        .collect();
    let (status, body) = app.policies(&cedar).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An outbound connection with one route detokenizing `$.card.number`.
fn charge_config(name: &str, base_url: &str, tls: Option<Value>) -> Value {
    let mut config = json!({"name": name, "kind": "outbound", "base_url": base_url,
        "vault": "payments",
        "routes": [{"name": "charge", "method": "POST", "path": "/v1/charges",
            "request": {"detokenize": [
                {"location": "body", "path": "$.card.number", "redaction": "plain"}]}}]});
    if let Some(tls) = tls {
        config["tls"] = tls;
    }
    config
}

async fn create_connection(app: &TestApp, config: Value) -> Value {
    let (status, body) = app.post("/v1/connections", config).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// A charge through the gateway with the card's token; status and JSON answer.
async fn charge(app: &TestApp, key: &str, connection: &str, token: &str) -> (StatusCode, Value) {
    app.call_as(
        Some(key),
        Method::POST,
        &format!("/v1/gateway/{connection}/v1/charges"),
        Some(json!({"amount": 1000, "card": {"number": token, "exp_month": 12}})),
    )
    .await
}

/// The fields the error's details name.
fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d["field"].as_str().map(str::to_string))
        .collect()
}

/// `POST /v1/connections` refuses `config` with 400 `invalid_request` naming exactly `field`.
async fn assert_refused(app: &TestApp, config: Value, field: &str) {
    let (status, body) = app.post("/v1/connections", config).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        fields(&body).iter().any(|f| f == field),
        "details should name `{field}`: {body}"
    );
}

// ---- the tests ---------------------------------------------------------------------------

#[tokio::test]
async fn a_private_ca_lets_the_gateway_reach_an_https_upstream() {
    let ca = Ca::new("Strongroom test CA");
    let upstream = TlsUpstream::start(server_config(&ca.server_leaf(), None)).await;
    let app = spawn_app().await;
    let token = card_token(&app).await;
    set_policies(&app, &["secure", "by-name"]).await;
    let tls = json!({"ca_pem": ca.pem()});
    let created = create_connection(
        &app,
        charge_config(
            "secure",
            &format!("{}/base", upstream.base()),
            Some(tls.clone()),
        ),
    )
    .await;
    assert_eq!(created["tls"], tls, "the CA is echoed as given: {created}");
    let checkout = app.service_account("checkout", &["app"]).await;

    let (status, body) = charge(&app, &checkout, "secure", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"ok": true, "id": "ch_tls"}));
    // the upstream speaks TLS only: the plaintext crossed the wire encrypted
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/base/v1/charges");
    assert_eq!(seen[0].body["card"]["number"], ADA_CARD, "{:?}", seen[0]);
    assert_eq!(seen[0].body["amount"], 1000);
    assert_eq!(
        seen[0].client_cert, None,
        "no client certificate configured"
    );
    assert!(upstream.handshakes() >= 1);
    assert!(upstream.refused().is_empty(), "{:?}", upstream.refused());
    assert!(!body.to_string().contains(ADA_CARD), "{body}");

    // by DNS name too: the certificate names `localhost`
    create_connection(
        &app,
        charge_config(
            "by-name",
            &format!("https://localhost:{}", upstream.port()),
            Some(tls),
        ),
    )
    .await;
    let (status, body) = charge(&app, &checkout, "by-name", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].uri, "/v1/charges");
    assert_eq!(seen[1].body["card"]["number"], ADA_CARD);
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_refused_before_anything_is_sent() {
    let ca = Ca::new("Strongroom test CA");
    let upstream = TlsUpstream::start(server_config(&ca.server_leaf(), None)).await;
    // signed by the same CA, for another name than the address dialled
    let misnamed = TlsUpstream::start(server_config(
        &ca.issue(
            "elsewhere",
            &["elsewhere.example.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        None,
    ))
    .await;
    let app = spawn_app().await;
    let token = card_token(&app).await;
    set_policies(&app, &["system-roots", "other-ca", "misnamed"]).await;
    create_connection(&app, charge_config("system-roots", &upstream.base(), None)).await;
    let other_ca = Ca::new("Some other CA");
    create_connection(
        &app,
        charge_config(
            "other-ca",
            &upstream.base(),
            Some(json!({"ca_pem": other_ca.pem()})),
        ),
    )
    .await;
    create_connection(
        &app,
        charge_config(
            "misnamed",
            &misnamed.base(),
            Some(json!({"ca_pem": ca.pem()})),
        ),
    )
    .await;
    let checkout = app.service_account("checkout", &["app"]).await;

    for (n, name) in ["system-roots", "other-ca"].into_iter().enumerate() {
        let (status, body) = charge(&app, &checkout, name, &token).await;
        assert_error(status, &body, StatusCode::BAD_GATEWAY, "upstream_error");
        assert!(!body.to_string().contains(ADA_CARD), "{body}");
        // the handshake was tried and abandoned by the gateway: nothing reached the handler
        let refused = upstream.wait_for_refused(n + 1).await;
        assert!(upstream.requests().is_empty(), "{name}: {refused:?}");
    }
    assert_eq!(upstream.handshakes(), 0);

    let (status, body) = charge(&app, &checkout, "misnamed", &token).await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "upstream_error");
    misnamed.wait_for_refused(1).await;
    assert!(misnamed.requests().is_empty());
    assert_eq!(misnamed.handshakes(), 0);
}

#[tokio::test]
async fn an_upstream_requiring_client_certificates_gets_the_connections_identity() {
    let ca = Ca::new("Strongroom test CA");
    let client_ca = Ca::new("Partner client CA");
    let identity = client_ca.client_leaf("strongroom-gateway");
    let upstream = TlsUpstream::start(server_config(&ca.server_leaf(), Some(&client_ca))).await;
    let app = spawn_app().await;
    let token = card_token(&app).await;
    set_policies(&app, &["mtls"]).await;
    let checkout = app.service_account("checkout", &["app"]).await;

    // no client certificate: the upstream refuses the handshake
    let base = upstream.base();
    create_connection(
        &app,
        charge_config("mtls", &base, Some(json!({"ca_pem": ca.pem()}))),
    )
    .await;
    let (status, body) = charge(&app, &checkout, "mtls", &token).await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "upstream_error");
    upstream.wait_for_refused(1).await;
    assert!(upstream.requests().is_empty());

    // the client certificate, its key a secret
    let key_pem = identity.key_pem();
    put_secret(&app, "mtls_key", &key_pem).await;
    let tls = json!({"ca_pem": ca.pem(), "client_cert_pem": identity.cert_pem(),
                     "client_key_secret": "mtls_key"});
    let (status, updated) = app
        .call(
            Method::PUT,
            "/v1/connections/mtls",
            Some(charge_config("mtls", &base, Some(tls.clone()))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2, "{updated}");
    assert_eq!(
        updated["tls"], tls,
        "the key's name, never the key: {updated}"
    );
    let (status, body) = charge(&app, &checkout, "mtls", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body["card"]["number"], ADA_CARD);
    assert_eq!(
        seen[0].client_cert.as_deref(),
        Some(identity.der().as_slice()),
        "the upstream saw the connection's certificate"
    );

    // the key never shows, wherever the connection is read
    for path in ["/v1/connections/mtls", "/v1/connections", "/v1/secrets"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!body.to_string().contains("PRIVATE KEY"), "{path}: {body}");
    }

    // rotating the key's secret rebuilds the client: a key that is not PEM fails the call
    // (the cached client would still have worked), and the right key works again
    put_secret(&app, "mtls_key", "not a key").await;
    let (status, body) = charge(&app, &checkout, "mtls", &token).await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(upstream.requests().len(), 1, "no request got through");
    put_secret(&app, "mtls_key", &key_pem).await;
    let (status, body) = charge(&app, &checkout, "mtls", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn a_client_key_that_does_not_fit_its_certificate_is_a_bad_gateway() {
    let ca = Ca::new("Strongroom test CA");
    let client_ca = Ca::new("Partner client CA");
    let identity = client_ca.client_leaf("strongroom-gateway");
    let stranger = client_ca.client_leaf("someone-else");
    let upstream = TlsUpstream::start(server_config(&ca.server_leaf(), Some(&client_ca))).await;
    let app = spawn_app().await;
    let token = card_token(&app).await;
    set_policies(&app, &["mtls"]).await;
    let config = charge_config(
        "mtls",
        &upstream.base(),
        Some(
            json!({"ca_pem": ca.pem(), "client_cert_pem": identity.cert_pem(),
                    "client_key_secret": "mtls_key"}),
        ),
    );
    // a well-formed key, but another certificate's: refused when configured...
    put_secret(&app, "mtls_key", &stranger.key_pem()).await;
    assert_refused(&app, config.clone(), "tls.client_key_secret").await;
    // ...and when the secret changes afterwards, a bad gateway (never a 500)
    put_secret(&app, "mtls_key", &identity.key_pem()).await;
    create_connection(&app, config).await;
    put_secret(&app, "mtls_key", &stranger.key_pem()).await;
    let checkout = app.service_account("checkout", &["app"]).await;
    let (status, body) = charge(&app, &checkout, "mtls", &token).await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "upstream_error");
    assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn tls_settings_are_validated() {
    let ca = Ca::new("Strongroom test CA");
    let identity = ca.client_leaf("strongroom-gateway");
    let app = spawn_app().await;
    app.payments_vault().await;
    put_secret(&app, "client_key", &identity.key_pem()).await;
    let with_tls = |tls: Value| charge_config("checked", "https://127.0.0.1:9", Some(tls));

    // a broken PEM block is no CA bundle
    assert_refused(
        &app,
        with_tls(json!({"ca_pem":
            "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n"})),
        "tls.ca_pem",
    )
    .await;
    // a certificate and its key's secret go together
    assert_refused(
        &app,
        with_tls(json!({"client_cert_pem": identity.cert_pem()})),
        "tls",
    )
    .await;
    assert_refused(
        &app,
        with_tls(json!({"client_key_secret": "client_key"})),
        "tls",
    )
    .await;
    // the key's secret must exist
    assert_refused(
        &app,
        with_tls(json!({"client_cert_pem": identity.cert_pem(), "client_key_secret": "nope"})),
        "tls.client_key_secret",
    )
    .await;
    // unknown settings are refused
    let (status, body) = app
        .post(
            "/v1/connections",
            with_tls(json!({"ca_pem": ca.pem(), "insecure_skip_verify": true})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    // all of it together is accepted
    let (status, body) = app
        .post(
            "/v1/connections",
            with_tls(
                json!({"ca_pem": ca.pem(), "client_cert_pem": identity.cert_pem(),
                            "client_key_secret": "client_key"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A PEM block whose content is base64 but no certificate.
const NOT_DER: &str = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";

#[tokio::test]
async fn a_ca_bundle_must_hold_certificates() {
    let ca = Ca::new("Strongroom test CA");
    let identity = ca.client_leaf("strongroom-gateway");
    let app = spawn_app().await;
    app.payments_vault().await;
    let with_tls = |tls: Value| charge_config("checked", "https://127.0.0.1:9", Some(tls));
    let not_a_bundle = [
        "not a certificate".to_string(),
        String::new(),
        // PEM, but a private key
        identity.key_pem(),
        NOT_DER.to_string(),
    ];
    for bad in not_a_bundle {
        assert_refused(&app, with_tls(json!({"ca_pem": bad})), "tls.ca_pem").await;
    }
}

#[tokio::test]
async fn a_client_certificate_must_parse() {
    let ca = Ca::new("Strongroom test CA");
    let identity = ca.client_leaf("strongroom-gateway");
    let app = spawn_app().await;
    app.payments_vault().await;
    put_secret(&app, "client_key", &identity.key_pem()).await;
    for bad in ["not a certificate", NOT_DER] {
        assert_refused(
            &app,
            charge_config(
                "checked",
                "https://127.0.0.1:9",
                Some(json!({"client_cert_pem": bad, "client_key_secret": "client_key"})),
            ),
            "tls.client_cert_pem",
        )
        .await;
    }
}
