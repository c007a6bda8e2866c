//! Typed events: dispatch data deserialised on request into
//! [twilight-model](https://docs.rs/twilight-model/0.18)'s event types (feature `twilight`).
//!
//! A [`Dispatch`] carries its data as raw JSON sharing the frame's receive buffer; nothing on the
//! receive path parses it. [`TwilightExt::event`] parses it when, and only when, the application
//! asks, with twilight-model's deserializer keyed by the event name, so an application can feed
//! [`Event`]s straight into `twilight-cache-inmemory` (`cache.update(&event)`) or match on them.
//! An application that never calls it pays nothing: with the feature off this module does not
//! exist, and with it on the raw path is the same code.
//!
//! ```no_run
//! # async fn run(mut shard: handover_runtime::Shard) {
//! use handover_runtime::ShardEventKind;
//! use handover_runtime::twilight::{TwilightExt, TypedError};
//! use handover_runtime::twilight::twilight_model::gateway::event::Event;
//!
//! while let Some(event) = shard.next_event().await {
//!     let ShardEventKind::Dispatch(dispatch) = &event.kind else { continue };
//!     match dispatch.event() {
//!         Ok(Event::MessageCreate(message)) => println!("{}", message.content),
//!         Ok(_) => {}
//!         // An event this twilight-model release does not know: the raw data is still there.
//!         Err(TypedError::Unknown { .. }) => {}
//!         Err(error) => eprintln!("{error}"),
//!     }
//! }
//! # }
//! ```

use handover_protocol::{Dispatch, Ready};
use serde::de::DeserializeSeed;
use twilight_model::gateway::event::{
    DispatchEvent, DispatchEventWithTypeDeserializer, Event, EventType,
};

use crate::{ShardEvent, ShardEventKind};

/// The twilight-model release the typed events come from, re-exported so that an application
/// (and its cache) uses the same types.
pub use twilight_model;

/// twilight's in-memory cache, of the release that takes these [`Event`]s
/// (`cache.update(&event)`).
pub use twilight_cache_inmemory;

/// Why a dispatch could not be turned into a twilight-model event.
///
/// The messages name the event and where the data stopped making sense, never the data itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedError {
    /// The event name is not one twilight-model knows (Discord adds events between releases).
    /// The raw [`Dispatch`] still has it.
    #[error("event {event_type} is not modelled by twilight-model")]
    Unknown {
        /// The event name (`t`).
        event_type: String,
    },
    /// The name is known but the data does not match twilight-model's type for it.
    #[error("event {event_type} does not match twilight-model's type: {source}")]
    Malformed {
        /// The event name (`t`).
        event_type: String,
        /// Where the data stopped matching (line, column and what was expected).
        #[source]
        source: serde_json::Error,
    },
}

/// Typed access to dispatches through twilight-model.
pub trait TwilightExt {
    /// The dispatch deserialised into twilight's [`DispatchEvent`].
    fn dispatch_event(&self) -> Result<DispatchEvent, TypedError>;

    /// The dispatch deserialised into twilight's [`Event`] (what `twilight-cache-inmemory`
    /// takes).
    fn event(&self) -> Result<Event, TypedError> {
        self.dispatch_event().map(Event::from)
    }
}

impl TwilightExt for Dispatch {
    fn dispatch_event(&self) -> Result<DispatchEvent, TypedError> {
        deserialize(&self.event_type, self.data.as_str())
    }
}

/// Deserialises the data `data` of the dispatch named `event_type`.
fn deserialize(event_type: &str, data: &str) -> Result<DispatchEvent, TypedError> {
    let mut de = serde_json::Deserializer::from_str(data);
    match DispatchEventWithTypeDeserializer::new(event_type)
        .deserialize(&mut de)
        .and_then(|event| de.end().map(|()| event))
    {
        Ok(event) => Ok(event),
        // The deserializer answers an unknown name with an "unknown variant" error; tell it
        // apart from bad data by asking whether twilight knows the name at all.
        Err(_) if !known(event_type) => Err(TypedError::Unknown {
            event_type: event_type.to_owned(),
        }),
        Err(source) => Err(TypedError::Malformed {
            event_type: event_type.to_owned(),
            source,
        }),
    }
}

/// Whether twilight-model has a type for the event `name`.
fn known(name: &str) -> bool {
    EventType::try_from(name).is_ok()
}

impl TwilightExt for Ready {
    /// READY's data as twilight's `Ready` (user, guilds, application, shard).
    fn dispatch_event(&self) -> Result<DispatchEvent, TypedError> {
        deserialize("READY", self.data.as_str())
    }
}

/// The twilight-model event of a shard event, parsed now: `Some` for a dispatch, READY and
/// RESUMED (what Discord sent), `None` for the runtime's own events (state changes, sockets,
/// gaps, warnings...). This is the one call an application makes to keep a
/// `twilight-cache-inmemory` cache fed:
///
/// ```no_run
/// # async fn run(mut fleet: handover_runtime::Fleet, apply: impl Fn(&handover_runtime::twilight::twilight_model::gateway::event::Event)) {
/// while let Some(event) = fleet.next_event().await {
///     if let Some(Ok(typed)) = handover_runtime::twilight::typed(&event) {
///         apply(&typed); // for example `cache.update(&typed)`
///     }
/// }
/// # }
/// ```
pub fn typed(event: &ShardEvent) -> Option<Result<Event, TypedError>> {
    match &event.kind {
        ShardEventKind::Dispatch(dispatch) => Some(dispatch.event()),
        ShardEventKind::Ready(ready) => Some(ready.event()),
        ShardEventKind::Resumed(_) => Some(Ok(Event::Resumed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::twilight_cache_inmemory::{DefaultInMemoryCache, ResourceType};
    use handover_mock::{DEFAULT_TOKEN, MockConfig, MockServer};
    use handover_protocol::{GatewayConfig, Intents, RawJson, Token};
    use twilight_model::gateway::payload::incoming::GuildCreate;
    use twilight_model::id::Id;

    use super::*;
    use crate::{Shard, ShardConfig};

    const GUILD_CREATE: &str = include_str!("../tests/data/guild_create.json");
    const MESSAGE_CREATE: &str = include_str!("../tests/data/message_create.json");
    const WAIT: Duration = Duration::from_secs(10);

    fn dispatch(event_type: &str, data: &str) -> Dispatch {
        Dispatch {
            seq: 1,
            event_type: event_type.into(),
            data: RawJson::parse(data).expect("test data is JSON"),
        }
    }

    async fn next(shard: &mut Shard) -> ShardEvent {
        tokio::time::timeout(WAIT, shard.next_event())
            .await
            .expect("an event in time")
            .expect("shard alive")
    }

    /// What the mock sends (its READY, and the GUILD_CREATE and MESSAGE_CREATE a test has it
    /// dispatch) comes out as twilight events and keeps a twilight cache up to date.
    #[tokio::test]
    async fn the_mocks_ready_guild_create_and_message_create_feed_a_twilight_cache() {
        let mock = MockServer::start(MockConfig::default())
            .await
            .expect("mock starts");
        let mut gateway = GatewayConfig::new(
            Token::new(DEFAULT_TOKEN).expect("well formed"),
            Intents::GUILDS | Intents::GUILD_MESSAGES,
        );
        gateway.gateway_url = mock.url();
        let mut shard = Shard::start(ShardConfig::new(gateway)).expect("valid config");
        let cache = DefaultInMemoryCache::builder()
            .resource_types(ResourceType::all())
            .build();

        let mut typed_events = Vec::new();
        for _ in 0..50 {
            let event = next(&mut shard).await;
            if matches!(event.kind, ShardEventKind::Ready(_)) {
                let handle = mock.handle();
                let guild: serde_json::Value = serde_json::from_str(GUILD_CREATE).expect("json");
                let message: serde_json::Value =
                    serde_json::from_str(MESSAGE_CREATE).expect("json");
                assert_eq!(handle.dispatch(0, "GUILD_CREATE", &guild), 1);
                assert_eq!(handle.dispatch(0, "MESSAGE_CREATE", &message), 1);
            }
            if let Some(typed) = typed(&event) {
                let typed = typed.expect("the mock's payloads match twilight's types");
                cache.update(&typed);
                typed_events.push(typed);
            }
            if typed_events.len() == 3 {
                break;
            }
        }
        assert_eq!(typed_events.len(), 3, "READY, GUILD_CREATE, MESSAGE_CREATE");
        let Event::Ready(ready) = &typed_events[0] else {
            panic!("READY first, got {:?}", typed_events[0].kind());
        };
        assert_eq!(ready.user.name, "mock-bot-0");
        assert!(ready.user.bot);
        let Event::GuildCreate(guild) = &typed_events[1] else {
            panic!("GUILD_CREATE second, got {:?}", typed_events[1].kind());
        };
        assert!(matches!(&**guild, GuildCreate::Available(g) if g.name == "handover test guild"));
        let Event::MessageCreate(message) = &typed_events[2] else {
            panic!("MESSAGE_CREATE third, got {:?}", typed_events[2].kind());
        };
        assert_eq!(message.content, "!ping");

        // The cache took all three.
        let me = cache.current_user().expect("READY sets the current user");
        assert_eq!(me.name, "mock-bot-0");
        let channel = cache
            .channel(Id::new(4_194_304_001))
            .expect("GUILD_CREATE's channel is cached");
        assert_eq!(channel.name.as_deref(), Some("general"));
        assert!(cache.message(Id::new(4_194_304_100)).is_some());

        shard
            .stop(handover_core::StopIntent::EndSession)
            .await
            .expect("stops");
        // Events of the runtime's own are not Discord's: no typed event for them.
        let closed = ShardEvent {
            shard: 0,
            kind: ShardEventKind::SocketClosed { code: Some(1000) },
        };
        assert!(typed(&closed).is_none());
    }

    #[test]
    fn data_that_does_not_match_the_type_is_a_typed_error_naming_the_event() {
        // `content` must be a string; the rest is missing.
        let err = dispatch(
            "MESSAGE_CREATE",
            r#"{"content": 5, "secret": "do-not-echo"}"#,
        )
        .event()
        .expect_err("malformed");
        assert!(
            matches!(&err, TypedError::Malformed { event_type, .. } if event_type == "MESSAGE_CREATE"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("event MESSAGE_CREATE does not match"),
            "{message}"
        );
        assert!(!message.contains("do-not-echo"), "{message}");

        // A well-formed payload with a field of the wrong type deep inside.
        let bad_channel = GUILD_CREATE.replace(r#""type": 0"#, r#""type": "text""#);
        assert!(matches!(
            dispatch("GUILD_CREATE", &bad_channel).event(),
            Err(TypedError::Malformed { .. })
        ));
        // READY with no user.
        assert!(matches!(
            dispatch("READY", r#"{"v": 10, "session_id": "s"}"#).event(),
            Err(TypedError::Malformed { .. })
        ));
    }

    #[test]
    fn an_event_twilight_does_not_know_is_unknown_not_malformed() {
        let err = dispatch("SOMETHING_DISCORD_ADDED_LATER", r#"{"id": "1"}"#)
            .event()
            .expect_err("unknown");
        assert!(
            matches!(&err, TypedError::Unknown { event_type } if event_type == "SOMETHING_DISCORD_ADDED_LATER"),
            "{err:?}"
        );
        // A known name with matching data is an event, with the name's type.
        let event = dispatch("MESSAGE_CREATE", MESSAGE_CREATE)
            .dispatch_event()
            .expect("valid");
        assert_eq!(event.kind(), EventType::MessageCreate);
    }
}
