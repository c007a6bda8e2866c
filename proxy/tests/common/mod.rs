//! The start-up the proxy's end-to-end tests share: the mock gateway, one upstream shard in
//! front of it, the proxy on a free loopback port, and the upstream checks after a run.

#![allow(dead_code)] // Each test crate uses part of this module.

use std::time::Duration;

use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
use handover_protocol::{GatewayConfig, Intents, Token};
use handover_proxy::server::Proxy;
use handover_proxy::{HubConfig, ProxyConfig};
use handover_runtime::{Fleet, FleetConfig, ShardSelection};
use tokio::net::TcpListener;

/// The intents of the upstream shard and of the proxy's hub.
pub(crate) const INTENTS: Intents = Intents::GUILDS.union(Intents::GUILD_MESSAGES);

/// A mock, one upstream shard of [`INTENTS`] and the proxy, with `tune` applied to the proxy's
/// configuration; returns once the upstream shard is READY, with the proxy's `ws://` URL.
pub(crate) async fn start(tune: impl FnOnce(&mut ProxyConfig)) -> (MockServer, Proxy, String) {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let mut gateway = GatewayConfig::new(Token::new(DEFAULT_TOKEN).unwrap(), INTENTS);
    gateway.gateway_url = mock.url();
    let fleet = Fleet::start(FleetConfig::new(gateway, ShardSelection::All { total: 1 })).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let hub = HubConfig::new(
        Token::new(DEFAULT_TOKEN).unwrap(),
        INTENTS,
        vec![0],
        1,
        url.clone(),
    );
    let mut config = ProxyConfig::new(hub);
    tune(&mut config);
    let proxy = Proxy::start(listener, fleet, config).unwrap();
    let handle = proxy.handle();
    // Bounded: 500 x 10 ms.
    for _ in 0..500 {
        if handle.upstream_ready(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        handle.upstream_ready(0),
        "the upstream shard never got READY"
    );
    (mock, proxy, url)
}

/// What the mock saw of the upstream shard: one identify, no resume, one socket, whatever
/// the clients did.
pub(crate) fn assert_upstream_untouched(mock: &MockServer) {
    let counters = mock.handle().counters();
    let shard = counters.shard(0);
    assert_eq!(shard.identifies, 1, "upstream: one identify");
    assert_eq!(
        shard.resumes_ok + shard.resumes_failed,
        0,
        "upstream: no reconnect"
    );
    assert_eq!(counters.connections_accepted, 1, "upstream: one socket");
}
