//! The `strongroom` command: `strongroom serve` runs the server.

use std::process::ExitCode;

/// Every request allocates and frees many small buffers (headers, JSON, audit events) across
/// worker threads; in a profile glibc's allocator took about a fifth of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: strongroom [serve | version | help]

  serve     run the server (the default). Settings come from STRONGROOM_* environment
            variables (see README.md); with no STRONGROOM_DATABASE_URL the server runs its
            own PostgreSQL under STRONGROOM_DATA_DIR (default ./strongroom-data).
  version   print the version";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "serve".to_string());
    match command.as_str() {
        "serve" => serve().await,
        "version" | "--version" | "-V" => {
            println!("strongroom {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    strongroom::telemetry::init();
    let result = async {
        let settings = strongroom::config::Settings::from_env()?;
        let app = strongroom::startup::Application::build(settings).await?;
        app.run_until_stopped().await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
