//! The JSON API under `/api/`: what the home screen does besides the call (which runs over
//! the WebSocket). Every handler answers `{"ok": true, ...}` or an error status with
//! `{"error": "in words"}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::state::{App, AppResult};

fn reply(result: AppResult<Value>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    }
}

fn ok() -> Value {
    json!({"ok": true})
}

pub async fn state(State(app): State<Arc<App>>) -> Response {
    Json(app.state().await).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    name: String,
}

pub async fn create_account(State(app): State<Arc<App>>, Json(b): Json<NameBody>) -> Response {
    reply(app.create_account(&b.name).await.map(|()| ok()))
}

pub async fn set_name(State(app): State<Arc<App>>, Json(b): Json<NameBody>) -> Response {
    reply(app.set_name(&b.name).await.map(|()| ok()))
}

pub async fn create_room(State(app): State<Arc<App>>) -> Response {
    reply(
        app.create_room()
            .await
            .map(|r| json!({"ok": true, "room_id": r.room_id, "ticket": r.ticket})),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayBody {
    addr: String,
}

pub async fn add_relay(State(app): State<Arc<App>>, Json(b): Json<RelayBody>) -> Response {
    reply(app.set_relay(&b.addr, true).await.map(|()| ok()))
}

pub async fn remove_relay(State(app): State<Arc<App>>, Json(b): Json<RelayBody>) -> Response {
    reply(app.set_relay(&b.addr, false).await.map(|()| ok()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    days: u32,
}

pub async fn set_retention(State(app): State<Arc<App>>, Json(b): Json<RetentionBody>) -> Response {
    reply(app.set_retention(b.days).await.map(|()| ok()))
}

pub async fn clear_history(State(app): State<Arc<App>>) -> Response {
    reply(
        app.clear_history()
            .await
            .map(|n| json!({"ok": true, "removed": n})),
    )
}

pub async fn export(State(app): State<Arc<App>>) -> Response {
    match app.export().await {
        Ok(doc) => (
            [(
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"confab-account.json\"",
            )],
            Json(doc),
        )
            .into_response(),
        Err(e) => reply(Err(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// Must be the word "delete": the page asks the user to type it.
    confirm: String,
}

pub async fn delete_account(State(app): State<Arc<App>>, Json(b): Json<DeleteBody>) -> Response {
    if b.confirm != "delete" {
        return reply(Err("type the word delete to confirm".into()));
    }
    reply(app.delete_account().await.map(|()| ok()))
}
