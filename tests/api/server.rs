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
