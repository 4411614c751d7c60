//! Files in `file` columns: multipart upload into a record, and download.
//!
//! A file can also be written as JSON (`{"name", "media_type", "content_base64"}`) through the
//! record insert and update endpoints; these routes serve clients that hold the raw bytes.

use super::AppState;
use super::auth::{Action, Principal, authorize, note_table};
use super::error::ApiError;
use super::extract::{Form, multipart_error};
use crate::types::file::MAX_FILE_BYTES;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, json};

/// Bodies that may carry a whole file: its bytes in multipart, or base64 in JSON (a third
/// larger), with room for the rest of the request.
pub const FILE_BODY_BYTES: usize = MAX_FILE_BYTES / 3 * 4 + (2 << 20);

/// `/vaults/{vault}/tables/{table}/records/{id}/files/{column}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/vaults/{vault}/tables/{table}/records/{id}/files/{column}",
            get(download).put(upload),
        )
        .layer(DefaultBodyLimit::max(FILE_BODY_BYTES))
}

/// `GET …/files/{column}`: the file's bytes, if the caller may read that column in plain.
async fn download(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id, column)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::ReadRecord, Some(&vault))?;
    note_table(&table);
    let mut file = s
        .vault
        .read_file(&vault, &table, &id, &column, &p.gate(&s))
        .await?;
    crate::governance::audit::note(|e| e.count("file_bytes", file.data.len() as u64));
    let disposition = format!(
        "attachment; filename*=UTF-8''{}",
        utf8_percent_encode(&file.name, NON_ALPHANUMERIC)
    );
    // Moved, not copied: the buffer handed to the response is the only one left.
    let mut response = Body::from(std::mem::take(&mut *file.data)).into_response();
    let headers = response.headers_mut();
    // The media type was validated on the way in (`type/subtype`, restricted characters).
    if let Ok(v) = HeaderValue::from_str(&file.media_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `PUT …/files/{column}` with one multipart part named `file` (its file name and content type
/// are the part's): stores the file in that column of the record, like an update.
async fn upload(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((vault, table, id, column)): Path<(String, String, String, String)>,
    Form(mut form): Form,
) -> Result<Response, ApiError> {
    authorize(&s, &p, Action::UpdateRecord, Some(&vault))?;
    note_table(&table);
    let mut file = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, "the multipart/form-data body"))?
    {
        if field.name() != Some("file") || file.is_some() {
            return Err(ApiError::invalid(
                "send exactly one part, named `file`, with a file name and a content type",
            ));
        }
        let name = field.file_name().map(str::to_string);
        let media_type = field.content_type().map(str::to_string);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| multipart_error(&e, "the `file` part (at most 16 MiB)"))?;
        let (Some(name), Some(media_type)) = (name, media_type) else {
            return Err(ApiError::invalid(
                "the `file` part needs a file name and a content type",
            ));
        };
        file = Some(json!({
            "name": name,
            "media_type": media_type,
            "content_base64": STANDARD.encode(&bytes),
        }));
    }
    let Some(file) = file else {
        return Err(ApiError::invalid("send one part named `file`"));
    };
    let fields = Map::from_iter([(column, file)]);
    let updated = s
        .vault
        .update_record(&vault, &table, &id, fields, None, &p.gate(&s))
        .await?;
    Ok(axum::Json(updated).into_response())
}
