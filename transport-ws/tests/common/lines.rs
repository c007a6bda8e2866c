//! The line protocol's server side for one connection, shared by the tests and benches that
//! need a peer for many connections (the `TestServer` serves one at a time).

#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;

/// Accepts the WebSocket on `stream`, sends `hello <interval_ms>`, answers `identify` with
/// `ready` and, when `ack`, `hb` with `ack`, until the client goes.
pub async fn serve_lines<S>(stream: S, interval_ms: u64, ack: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    if ws
        .send(Message::text(format!("hello {interval_ms}")))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg.to_text().unwrap_or("") {
            "identify" => "ready",
            "hb" if ack => "ack",
            _ => continue,
        };
        if ws.send(Message::text(reply)).await.is_err() {
            return;
        }
    }
}
