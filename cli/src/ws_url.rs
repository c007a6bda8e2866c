//! Gateway URLs as the binary checks them: `--gateway-url` at start, and the
//! `resume_gateway_url` of a session file before a RESUME (which carries the token) is sent
//! there.
//!
//! Parsing uses [`hyper::Uri`], the URI type the WebSocket client parses the same text with.

use hyper::Uri;

/// Why a text is not a usable gateway URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsUrlError {
    /// Not a URI at all.
    #[error("not a url")]
    Unparsable,
    /// A scheme other than `ws` or `wss`, or none.
    #[error("the scheme must be ws:// or wss://")]
    Scheme,
    /// No host.
    #[error("the url names no host")]
    NoHost,
}

/// The scheme, host and port a gateway URL connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsEndpoint {
    /// `true` for `wss`.
    pub tls: bool,
    /// The host, lowercase (an IPv6 address keeps its brackets).
    pub host: String,
    /// The port, explicit or the scheme's default (80 for `ws`, 443 for `wss`).
    pub port: u16,
}

impl WsEndpoint {
    /// Parses `url`: a `ws://` or `wss://` URL with a host.
    pub fn parse(url: &str) -> Result<WsEndpoint, WsUrlError> {
        let uri: Uri = url.parse().map_err(|_| WsUrlError::Unparsable)?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(WsUrlError::Scheme),
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() && h != "[]" => h.to_ascii_lowercase(),
            _ => return Err(WsUrlError::NoHost),
        };
        Ok(WsEndpoint {
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// Whether this is one of Discord's gateway hosts: `wss` on port 443, host
    /// `gateway.discord.gg` or a subdomain of `discord.gg` made of DNS labels (READY's
    /// `resume_gateway_url` names hosts such as `gateway-us-east1-b.discord.gg`).
    pub fn is_discord_gateway(&self) -> bool {
        if !self.tls || self.port != 443 {
            return false;
        }
        if self.host == "gateway.discord.gg" {
            return true;
        }
        let Some(sub) = self.host.strip_suffix(".discord.gg") else {
            return false;
        };
        !sub.is_empty() && sub.split('.').all(is_dns_label)
    }

    /// Whether `other` connects to the same scheme, host and port.
    pub fn same_origin(&self, other: &WsEndpoint) -> bool {
        self.tls == other.tls && self.host == other.host && self.port == other.port
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether a RESUME may be sent to `resume_url` read from a session file: a Discord gateway
/// host ([`WsEndpoint::is_discord_gateway`]), or the same scheme, host and port as
/// `configured`, the gateway URL in use (`--gateway-url`, or what `GET /gateway/bot`
/// answered).
pub fn resume_url_trusted(resume_url: &str, configured: &str) -> bool {
    let Ok(resume) = WsEndpoint::parse(resume_url) else {
        return false;
    };
    if resume.is_discord_gateway() {
        return true;
    }
    WsEndpoint::parse(configured).is_ok_and(|c| c.same_origin(&resume))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_are_parsed() {
        let e = WsEndpoint::parse("wss://Gateway.Discord.gg/?v=10").unwrap();
        assert_eq!(
            e,
            WsEndpoint {
                tls: true,
                host: "gateway.discord.gg".into(),
                port: 443,
            }
        );
        assert_eq!(WsEndpoint::parse("ws://127.0.0.1:9").unwrap().port, 9);
        assert_eq!(WsEndpoint::parse("WS://[::1]").unwrap().host, "[::1]");
        for (bad, why) in [
            ("ws://", WsUrlError::Unparsable),
            ("wss://", WsUrlError::Unparsable),
            ("ws://:80", WsUrlError::Unparsable),
            ("", WsUrlError::Unparsable),
            ("ws:// space", WsUrlError::Unparsable),
            (" ws://127.0.0.1:9", WsUrlError::Unparsable),
            ("http://x", WsUrlError::Scheme),
            ("gateway.discord.gg", WsUrlError::Scheme),
            ("/path", WsUrlError::Scheme),
        ] {
            let got = WsEndpoint::parse(bad);
            assert!(got.is_err(), "{bad:?} accepted: {got:?}");
            // Unparsable and no-host are both refusals; only the scheme case is precise.
            if why == WsUrlError::Scheme {
                assert_eq!(got, Err(why), "{bad:?}");
            }
        }
    }

    #[test]
    fn discord_hosts_are_trusted_for_resumes() {
        let configured = "wss://gateway.discord.gg";
        for ok in [
            "wss://gateway.discord.gg",
            "wss://gateway.discord.gg/",
            "wss://gateway-us-east1-b.discord.gg",
            "wss://gateway-us-east1-b.discord.gg:443/?v=10&encoding=json",
            "WSS://GATEWAY-US-EAST1-C.DISCORD.GG",
        ] {
            assert!(resume_url_trusted(ok, configured), "{ok} refused");
        }
        for bad in [
            "ws://gateway.discord.gg",
            "wss://gateway.discord.gg:8443",
            "wss://discord.gg",
            "wss://evil.example",
            "wss://gateway.discord.gg.evil.example",
            "wss://evildiscord.gg",
            "wss://gateway.discord.gg@evil.example",
            "wss://-x.discord.gg",
            "wss://a..discord.gg",
            "wss://a_b.discord.gg",
            "ws://127.0.0.1:9",
            "not a url",
            "",
        ] {
            assert!(!resume_url_trusted(bad, configured), "{bad} trusted");
        }
    }

    #[test]
    fn the_configured_gateway_is_trusted_for_resumes() {
        let configured = "ws://127.0.0.1:4000/?v=10";
        assert!(resume_url_trusted("ws://127.0.0.1:4000", configured));
        assert!(resume_url_trusted("WS://127.0.0.1:4000/other", configured));
        assert!(!resume_url_trusted("ws://127.0.0.1:4001", configured));
        assert!(!resume_url_trusted("wss://127.0.0.1:4000", configured));
        assert!(!resume_url_trusted("ws://127.0.0.2:4000", configured));
        assert!(!resume_url_trusted("ws://localhost:4000", configured));
        // Default ports count as written.
        assert!(resume_url_trusted(
            "wss://proxy.example:443",
            "wss://proxy.example"
        ));
        assert!(!resume_url_trusted(
            "ws://proxy.example",
            "ws://proxy.example:8080"
        ));
        // An unusable configured URL trusts nothing but Discord.
        assert!(!resume_url_trusted("ws://127.0.0.1:4000", "ws://"));
    }
}
