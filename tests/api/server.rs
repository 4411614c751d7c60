//! The server with no database configured: it runs its own PostgreSQL under the data directory.

use reqwest::StatusCode;
use std::os::unix::fs::PermissionsExt;
use strongroom::startup::Application;
use strongroom_tests::{temp_dir, test_settings};

#[tokio::test]
async fn runs_its_own_postgres_and_restarts_cleanly() {
    let dir = temp_dir("strongroom-test-serve");
    for round in 0..2 {
        let mut settings = test_settings(dir.clone());
        settings.admin_key = None;
        settings.master_keys = None;
        let app = Application::build(settings)
            .await
            .expect("build with managed PostgreSQL");
        let base = format!("http://{}", app.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "round {round}");
        let key = std::fs::read_to_string(dir.join("admin.key")).expect("admin key written");
        let mode = std::fs::metadata(dir.join("admin.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let resp = client
            .get(format!("{base}/v1/vaults"))
            .bearer_auth(key.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        tx.send(()).unwrap();
        handle.await.unwrap().expect("clean shutdown");
        assert!(
            !dir.join("postgres/data/postmaster.pid").exists(),
            "PostgreSQL still running after shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that trickles a request's headers is cut off at the header deadline, however
/// steadily it sends; a prompt client on a kept-alive connection is served as before.
#[tokio::test]
async fn a_client_cannot_hold_a_connection_by_trickling_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = strongroom_tests::TestApp::spawn_with(|s| s.header_read_timeout_ms = 300).await;
    let addr = app.base.trim_start_matches("http://").to_string();

    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: strongroom\r\nX-Padding: ";
    slow.write_all(head).await.expect("write");
    // One byte every 50 ms: never idle for long, never done.
    let mut closed = false;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(std::time::Duration::from_millis(50), slow.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the trickling connection was still open after 5 s");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );

    // A prompt client, twice on one connection.
    let mut prompt = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    for _ in 0..2 {
        prompt
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: strongroom\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = prompt.read(&mut buf).await.expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
