//! `GET /gateway/bot` over HTTPS: the gateway URL, the recommended shard count and the session
//! start limit. This is the only module of the protocol side that does I/O (tokio, rustls with
//! the `ring` provider).
//!
//! Source: <https://discord.com/developers/docs/events/gateway#get-gateway-bot>.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use handover_protocol::{SessionStartLimit, Token};

/// Discord's HTTP API host.
pub const DEFAULT_API_BASE: &str = "https://discord.com";

/// The answer of `GET /gateway/bot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayBot {
    /// The gateway URL for new sessions (put it in
    /// [`GatewayConfig::gateway_url`](handover_protocol::GatewayConfig::gateway_url)).
    pub url: String,
    /// The recommended number of shards.
    pub shards: u32,
    /// The session start limit (feed it to
    /// [`IdentifyQueue::set_session_start_limit`](handover_protocol::IdentifyQueue::set_session_start_limit)).
    pub session_start_limit: SessionStartLimit,
}

/// How to reach the API.
#[derive(Clone)]
pub struct HttpOptions {
    /// Deadline for the whole request (connect, TLS, answer, body). Default 10 s.
    pub timeout: Duration,
    /// Trust the Mozilla root certificates bundled by `webpki-roots`. Default `true`.
    pub webpki_roots: bool,
    /// Further trusted roots (DER), for example a test CA.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Largest response body accepted. Default 64 KiB (the real answer is ~150 bytes).
    pub max_body_bytes: usize,
    /// The `User-Agent` header; Discord asks bots for `DiscordBot (url, version)`.
    pub user_agent: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(10),
            webpki_roots: true,
            extra_roots: Vec::new(),
            max_body_bytes: 64 * 1024,
            user_agent: format!(
                "DiscordBot ({}, {})",
                env!("CARGO_PKG_REPOSITORY"),
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

impl HttpOptions {
    /// Trusts one more root certificate, in DER.
    pub fn add_root_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(CertificateDer::from(der.into()));
        self
    }

    /// Trusts every certificate of a PEM bundle.
    pub fn add_roots_pem(mut self, pem: &[u8]) -> Result<Self, HttpError> {
        let before = self.extra_roots.len();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| HttpError::Tls {
                reason: format!("bad pem certificate: {e}"),
            })?;
            self.extra_roots.push(cert);
        }
        if self.extra_roots.len() == before {
            return Err(HttpError::Tls {
                reason: "no certificate in pem input".into(),
            });
        }
        Ok(self)
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOptions")
            .field("timeout", &self.timeout)
            .field("webpki_roots", &self.webpki_roots)
            .field("extra_roots", &self.extra_roots.len())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// Why `GET /gateway/bot` failed. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The base URL is not an `http(s)://host[:port][/prefix]` URL.
    #[error("invalid api base url: {reason}")]
    InvalidUrl {
        /// Why.
        reason: String,
    },
    /// 401: the token is wrong (or cannot be put in a header). Retrying cannot help.
    #[error("invalid token (401 unauthorized)")]
    InvalidToken,
    /// 429: rate limited. Wait `retry_after` before asking again.
    #[error("rate limited (429), retry after {retry_after:?}")]
    RateLimited {
        /// From the body's `retry_after` (seconds) or the `Retry-After` header.
        retry_after: Duration,
        /// Whether the limit is the global one.
        global: bool,
    },
    /// Any other unsuccessful status.
    #[error("unexpected http status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The answer is not the documented JSON, or is too large.
    #[error("bad response body: {reason}")]
    BadBody {
        /// Why.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("connect failed: {reason}")]
    Connect {
        /// Why.
        reason: String,
    },
    /// TLS failed (for example an untrusted certificate).
    #[error("tls failed: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("http exchange failed: {reason}")]
    Http {
        /// Why.
        reason: String,
    },
    /// Nothing complete arrived within the deadline.
    #[error("request timed out after {after:?}")]
    Timeout {
        /// The deadline.
        after: Duration,
    },
}

/// `GET {base_url}/api/v10/gateway/bot` with `Authorization: Bot <token>`.
///
/// `base_url` is [`DEFAULT_API_BASE`] in production; tests and mocks pass their own
/// (`http://127.0.0.1:PORT` or an `https://` one with a test root in `options`).
pub async fn gateway_bot(
    base_url: &str,
    token: &Token,
    options: &HttpOptions,
) -> Result<GatewayBot, HttpError> {
    let target = Target::parse(base_url)?;
    let request = build_request(&target, token, options)?;
    let exchange = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| HttpError::Connect {
                reason: e.kind().to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let connector = tls_connector(options)?;
            let name =
                ServerName::try_from(target.host.clone()).map_err(|_| HttpError::InvalidUrl {
                    reason: "host is not a valid tls server name".into(),
                })?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls {
                    reason: e.to_string(),
                })?;
            exchange(tls, request, options.max_body_bytes).await
        } else {
            exchange(tcp, request, options.max_body_bytes).await
        }
    };
    let (status, headers, body) = tokio::time::timeout(options.timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            after: options.timeout,
        })??;
    interpret(status, &headers, &body)
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(base_url: &str) -> Result<Target, HttpError> {
        let bad = |reason: &str| HttpError::InvalidUrl {
            reason: reason.to_owned(),
        };
        let full = format!("{}/api/v10/gateway/bot", base_url.trim_end_matches('/'));
        let uri: Uri = full.parse().map_err(|_| bad("not a url"))?;
        if uri.query().is_some() {
            return Err(bad("query strings are not supported"));
        }
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the url are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path: uri.path().to_owned(),
        })
    }
}

fn build_request(
    target: &Target,
    token: &Token,
    options: &HttpOptions,
) -> Result<Request<Empty<Bytes>>, HttpError> {
    let mut auth = HeaderValue::try_from(format!("Bot {}", token.expose_secret()))
        .map_err(|_| HttpError::InvalidToken)?;
    auth.set_sensitive(true);
    let agent =
        HeaderValue::try_from(options.user_agent.as_str()).map_err(|_| HttpError::InvalidUrl {
            reason: "user agent is not a valid header value".into(),
        })?;
    Request::get(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::AUTHORIZATION, auth)
        .header(header::USER_AGENT, agent)
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| HttpError::Http {
            reason: e.to_string(),
        })
}

fn tls_connector(options: &HttpOptions) -> Result<tokio_rustls::TlsConnector, HttpError> {
    let mut roots = RootCertStore::empty();
    if options.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in &options.extra_roots {
        roots.add(cert.clone()).map_err(|e| HttpError::Tls {
            reason: format!("bad root certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One HTTP/1.1 request on `io`; returns status, headers and the (size-capped) body.
async fn exchange<S>(
    io: S,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| HttpError::Http {
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    // The connection future moves the bytes; it ends when the exchange is done or aborted.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(http)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| HttpError::BadBody {
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

fn interpret(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<GatewayBot, HttpError> {
    match status {
        StatusCode::OK => serde_json::from_slice(body).map_err(|e| HttpError::BadBody {
            reason: format!(
                "{:?} at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        }),
        StatusCode::UNAUTHORIZED => Err(HttpError::InvalidToken),
        StatusCode::TOO_MANY_REQUESTS => {
            #[derive(Deserialize)]
            struct Limit {
                retry_after: Option<f64>,
                #[serde(default)]
                global: bool,
            }
            let parsed: Option<Limit> = serde_json::from_slice(body).ok();
            let from_body = parsed.as_ref().and_then(|l| l.retry_after);
            let from_header = headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<f64>().ok());
            let secs = from_body.or(from_header).unwrap_or(1.0);
            let retry_after = Duration::try_from_secs_f64(secs.max(0.0))
                .unwrap_or(Duration::from_secs(3600))
                .min(Duration::from_secs(24 * 3600));
            tracing::warn!(
                retry_after_ms = retry_after.as_millis() as u64,
                "gateway/bot rate limited"
            );
            Err(HttpError::RateLimited {
                retry_after,
                global: parsed.is_some_and(|l| l.global),
            })
        }
        other => Err(HttpError::Status {
            status: other.as_u16(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    const TOKEN: &str = "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs";
    const OK_BODY: &str = r#"{"url":"wss://gateway.discord.gg","shards":9,"session_start_limit":{"total":1000,"remaining":999,"reset_after":14400000,"max_concurrency":1}}"#;

    fn token() -> Token {
        Token::new(TOKEN).unwrap()
    }

    fn response(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Reads one request head (up to the blank line) from `io`.
    async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            if io.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A one-shot plain HTTP server on 127.0.0.1; yields the request head it received.
    async fn serve_once(reply: String) -> (String, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let head = read_head(&mut s).await;
            s.write_all(reply.as_bytes()).await.unwrap();
            s.shutdown().await.ok();
            let _ = tx.send(head);
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn parses_the_documented_answer_and_sends_the_bot_token() {
        let (base, head) = serve_once(response("200 OK", "", OK_BODY)).await;
        let got = gateway_bot(&base, &token(), &HttpOptions::default())
            .await
            .unwrap();
        assert_eq!(
            got,
            GatewayBot {
                url: "wss://gateway.discord.gg".into(),
                shards: 9,
                session_start_limit: SessionStartLimit {
                    total: 1000,
                    remaining: 999,
                    reset_after: Duration::from_millis(14_400_000),
                    max_concurrency: 1,
                },
            }
        );
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /api/v10/gateway/bot http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!(
            "authorization: bot {}\r\n",
            TOKEN.to_ascii_lowercase()
        )));
        assert!(head.contains("user-agent: discordbot ("), "{head}");
    }

    #[tokio::test]
    async fn base_url_with_a_prefix_and_trailing_slash() {
        let (base, head) = serve_once(response("200 OK", "", OK_BODY)).await;
        gateway_bot(&format!("{base}/proxy/"), &token(), &HttpOptions::default())
            .await
            .unwrap();
        assert!(
            head.await
                .unwrap()
                .starts_with("GET /proxy/api/v10/gateway/bot ")
        );
    }

    #[tokio::test]
    async fn unauthorized_is_invalid_token() {
        let (base, _) = serve_once(response(
            "401 Unauthorized",
            "",
            r#"{"message": "401: Unauthorized", "code": 0}"#,
        ))
        .await;
        let err = gateway_bot(&base, &token(), &HttpOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err, HttpError::InvalidToken);
        assert!(!format!("{err} {err:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn too_many_requests_carries_retry_after() {
        let (base, _) = serve_once(response(
            "429 Too Many Requests",
            "retry-after: 7\r\n",
            r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": true}"#,
        ))
        .await;
        let err = gateway_bot(&base, &token(), &HttpOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            HttpError::RateLimited {
                retry_after: Duration::from_millis(1500),
                global: true
            }
        );
        // Header only.
        let (base, _) =
            serve_once(response("429 Too Many Requests", "retry-after: 7\r\n", "")).await;
        let err = gateway_bot(&base, &token(), &HttpOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            HttpError::RateLimited {
                retry_after: Duration::from_secs(7),
                global: false
            }
        );
    }

    #[tokio::test]
    async fn other_statuses_and_bad_bodies() {
        let (base, _) = serve_once(response("503 Service Unavailable", "", "")).await;
        assert_eq!(
            gateway_bot(&base, &token(), &HttpOptions::default()).await,
            Err(HttpError::Status { status: 503 })
        );
        let (base, _) = serve_once(response("200 OK", "", r#"{"url": 5}"#)).await;
        assert!(matches!(
            gateway_bot(&base, &token(), &HttpOptions::default()).await,
            Err(HttpError::BadBody { .. })
        ));
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100_000));
        let (base, _) = serve_once(response("200 OK", "", &big)).await;
        assert!(matches!(
            gateway_bot(&base, &token(), &HttpOptions::default()).await,
            Err(HttpError::BadBody { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            // Hold the socket open without answering until the test ends.
            let _ = done_rx.await;
        });
        let options = HttpOptions {
            timeout: Duration::from_millis(200),
            ..HttpOptions::default()
        };
        let err = gateway_bot(&format!("http://{addr}"), &token(), &options)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            HttpError::Timeout {
                after: Duration::from_millis(200)
            }
        );
        let _ = done_tx.send(());
    }

    #[tokio::test]
    async fn connection_refused_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(matches!(
            gateway_bot(&format!("http://{addr}"), &token(), &HttpOptions::default()).await,
            Err(HttpError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn bad_base_urls_are_refused() {
        for base in [
            "ftp://x",
            "not a url",
            "https://",
            "http://u:p@127.0.0.1",
            "http://127.0.0.1/?q=1",
        ] {
            assert!(
                matches!(
                    gateway_bot(base, &token(), &HttpOptions::default()).await,
                    Err(HttpError::InvalidUrl { .. })
                ),
                "{base}"
            );
        }
    }

    struct TestCa {
        root: CertificateDer<'static>,
        server: Arc<rustls::ServerConfig>,
    }

    fn test_ca() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        TestCa {
            root: ca.der().clone(),
            server: Arc::new(server),
        }
    }

    /// A one-shot HTTPS server on 127.0.0.1 with a certificate from the test CA.
    async fn serve_tls_once(server: Arc<rustls::ServerConfig>, reply: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(server).accept(s).await else {
                return;
            };
            let _ = read_head(&mut tls).await;
            tls.write_all(reply.as_bytes()).await.ok();
            tls.shutdown().await.ok();
        });
        format!("https://localhost:{}", addr.port())
    }

    #[tokio::test]
    async fn https_with_a_test_ca() {
        let ca = test_ca();
        let base = serve_tls_once(ca.server.clone(), response("200 OK", "", OK_BODY)).await;
        let options = HttpOptions {
            webpki_roots: false,
            ..HttpOptions::default()
        }
        .add_root_der(ca.root.to_vec());
        let got = gateway_bot(&base, &token(), &options).await.unwrap();
        assert_eq!(got.shards, 9);
        assert_eq!(got.session_start_limit.max_concurrency, 1);
    }

    #[tokio::test]
    async fn https_with_an_untrusted_certificate_fails() {
        let ca = test_ca();
        let base = serve_tls_once(ca.server.clone(), response("200 OK", "", OK_BODY)).await;
        let err = gateway_bot(&base, &token(), &HttpOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
    }

    #[test]
    fn pem_roots_are_read() {
        use rustls::pki_types::pem::PemObject;
        let ca = test_ca();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64(&ca.root)
        );
        let options = HttpOptions::default()
            .add_roots_pem(pem.as_bytes())
            .unwrap();
        assert_eq!(options.extra_roots, vec![ca.root.clone()]);
        assert!(HttpOptions::default().add_roots_pem(b"nothing").is_err());
        let _ = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(!format!("{options:?}").contains("BEGIN"));
    }

    fn base64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
