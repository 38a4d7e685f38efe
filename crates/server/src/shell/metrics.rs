//! `GET /metrics`: the node's metrics in the Prometheus text format, for an
//! operator's scraper. The core thread renders the text now and then
//! (`Core::publish_metrics`); this server only hands out the latest copy, so
//! a scrape never waits on the core and the core never waits on a scraper.
//!
//! The HTTP is the smallest that scrapers speak: one request per
//! connection, its head read up to a bound and a timeout, the answer
//! written, the connection closed. It runs only in production: the turmoil
//! tier drives the same `Core` without it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How often the core renders the metrics text.
pub const METRICS_REFRESH_MS: u64 = 1_000;
/// Scrapes served at once; a connection beyond it is closed at once.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// The largest request head read; a longer one gets 431 and the close.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// How long a scraper may take to send its request head.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The latest rendered text, shared between the core and the server.
pub(crate) type MetricsText = Arc<Mutex<String>>;

/// Serves scrapes until the runtime stops.
pub(crate) async fn serve_metrics(listener: TcpListener, text: MetricsText) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("too many metrics scrapes at once; closing one");
            continue;
        };
        let text = Arc::clone(&text);
        tokio::spawn(async move {
            let _slot = slot;
            answer(stream, &text).await;
        });
    }
}

async fn answer(mut stream: TcpStream, text: &MetricsText) {
    let timeout = Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS);
    let head = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(status)) => {
            let _ = respond(&mut stream, status, "").await;
            return;
        }
        Err(_) => return,
    };
    let (status, body) = route(&head, text);
    let _ = tokio::time::timeout(timeout, respond(&mut stream, status, &body)).await;
}

/// Reads up to the blank line ending the request head, within the bound.
async fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|_| "400 Bad Request")?;
        if read == 0 {
            return Err("400 Bad Request");
        }
        head.extend_from_slice(&buffer[..read]);
        if head.windows(4).any(|window| window == b"\r\n\r\n") {
            return String::from_utf8(head).map_err(|_| "400 Bad Request");
        }
        if head.len() > METRICS_REQUEST_BYTES_MAX {
            return Err("431 Request Header Fields Too Large");
        }
    }
}

/// The status and body for a request head.
fn route(head: &str, text: &MetricsText) -> (&'static str, String) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => {
            let body = text.lock().map(|text| text.clone()).unwrap_or_default();
            ("200 OK", body)
        }
        (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics is here\n".into()),
        _ => ("405 Method Not Allowed", String::new()),
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let text: MetricsText = Arc::new(Mutex::new("runnel_up 1\n".into()));
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &text),
            ("200 OK", "runnel_up 1\n".to_string())
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n", &text).0, "404 Not Found");
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n", &text).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("", &text).0, "405 Method Not Allowed");
    }
}
