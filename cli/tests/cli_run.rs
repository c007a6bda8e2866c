//! `handover run` as a child process against the mock gateway on 127.0.0.1: NDJSON events out,
//! commands in, the HTTP control API, hot restarts (HTTP and SIGHUP), draining on SIGTERM and
//! resuming from the session file in the next process.

mod cli_common;

use std::time::Duration;

use cli_common::{TOKEN, WAIT, http, mock_config, spawn, temp_dir};
use futures_util::FutureExt;
use handover_mock::{Fault, MockConfig, MockServer, SessionStartLimit};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_commands_http_control_and_hot_restarts() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let mut run = spawn(
        &[
            "run",
            "--api-base",
            &api,
            "--http",
            "127.0.0.1:0",
            "--drain-timeout-ms",
            "500",
        ],
        &[("HANDOVER_TOKEN", TOKEN)],
    );

    let started = run.expect_type("started").await;
    assert_eq!(started["shards"], json!([0]));
    assert_eq!(started["total"], 1);
    let addr = started["http"].as_str().expect("http address").to_owned();
    let ready = run.expect_type("ready").await;
    assert_eq!(ready["shard"], 0);
    let session = ready["session_id"].as_str().unwrap().to_owned();
    assert!(gw.counters().shard(0).sessions.contains_key(&session));
    assert_eq!(
        ready["data"]["session_id"],
        session.as_str(),
        "raw READY data"
    );

    // An event: one line, data as the gateway sent it.
    let data = json!({ "content": "hi\nthere", "nested": { "a": [1, 2.5, null] } });
    assert_eq!(gw.dispatch(0, "MESSAGE_CREATE", &data), 1);
    let ev = run.expect_type("dispatch").await;
    assert_eq!(ev["event"], "MESSAGE_CREATE");
    assert_eq!(ev["data"], data);
    assert_eq!(ev["seq"], 2);

    // Commands: acknowledged when they carry an id, a malformed line is refused and skipped.
    run.send(r#"{"op":"presence","status":"idle","id":"p1"}"#)
        .await;
    let ok = run.expect_type("ok").await;
    assert_eq!(
        (ok["id"].as_str(), ok["line"].as_u64()),
        (Some("p1"), Some(1))
    );
    run.send("this is not json").await;
    let err = run.expect_type("error").await;
    assert_eq!(err["line"], 2);
    assert!(
        err["error"].as_str().unwrap().contains("json object"),
        "{err}"
    );
    run.send(r#"{"op":"presence","shard":5,"status":"idle","id":7}"#)
        .await;
    let err = run.expect_type("error").await;
    assert_eq!(
        (err["id"].as_u64(), err["shard"].as_u64()),
        (Some(7), Some(5))
    );

    // A raw payload reaches the gateway; the gateway closes with 4001 and the shard resumes.
    run.send(r#"{"op":"raw","payload":{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}},"id":"raw"}"#)
        .await;
    run.expect_line("ok for raw", |v| v["type"] == "ok" && v["id"] == "raw")
        .await;
    assert_eq!(gw.inject(0, Fault::Close(4001)), 1);
    run.expect_type("resumed").await;
    run.seen_or_expect("socket closed with 4001", |v| {
        v["type"] == "socket_closed" && v["code"] == 4001
    })
    .await;
    let c = gw.counters().shard(0);
    assert_eq!(c.server_closes, vec![4001]);
    assert_eq!((c.identifies, c.resumes_ok), (1, 1));

    // The control API.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = http(&addr, "GET", "/health").await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if code == 200 {
            assert_eq!(
                v,
                json!({"healthy": true, "shards": [{"shard": 0, "phase": "receiving"}]})
            );
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert_eq!(v["healthy"], false);
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = http(&addr, "GET", "/status").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status[0]["shard"], 0);
    assert_eq!(status[0]["identifies"], 1);
    assert_eq!(status[0]["session_id"], session.as_str());
    assert_eq!(status[0]["last_close_code"], 4001);
    let (code, metrics) = http(&addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("handover_shard_phase{shard=\"0\",phase=\"receiving\"} 1\n"));
    assert!(metrics.contains("handover_shard_identifies_total{shard=\"0\"} 1\n"));
    assert!(metrics.contains("handover_shard_live_sockets{shard=\"0\"} 1\n"));
    assert!(metrics.contains("handover_commands_total{result=\"error\"} 2\n"));
    assert!(!metrics.contains(TOKEN));
    assert_eq!(http(&addr, "GET", "/nope").await.0, 404);
    assert_eq!(http(&addr, "GET", "/restart").await.0, 405);
    assert_eq!(http(&addr, "POST", "/health").await.0, 405);
    assert_eq!(http(&addr, "POST", "/restart/7").await.0, 404);

    // Hot restart over HTTP, then with SIGHUP: each resumes, no identify is spent.
    let (code, body) = http(&addr, "POST", "/restart").await;
    assert_eq!((code, body.as_str()), (202, r#"{"restarting":[0]}"#));
    run.expect_type("resumed").await;
    run.signal("HUP");
    run.expect_type("resumed").await;
    let c = gw.counters().shard(0);
    assert_eq!((c.identifies, c.resumes_ok, c.max_live_sockets), (1, 3, 1));

    // SIGTERM drains: exit 0, no socket left.
    run.signal("TERM");
    let status = run.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", run.stderr());
    gw.wait_for(WAIT, |c| c.live_sockets == 0).await.unwrap();
    assert_eq!(gw.counters().shard(0).close_frames.last(), Some(&4000));
    let everything = format!("{}\n{}", run.stdout(), run.stderr());
    assert!(!everything.contains(TOKEN), "the token leaked");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_process_hands_its_session_to_the_next_one() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let dir = temp_dir("session-handover");
    let file = dir.join("sessions.json");
    let file_arg = file.to_str().unwrap().to_owned();
    let args = ["run", "--api-base", &api, "--session-file", &file_arg];

    let mut first = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let ready = first.expect_type("ready").await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    gw.dispatch(0, "MESSAGE_CREATE", &json!({ "n": 1 }));
    let ev = first.expect_type("dispatch").await;
    assert_eq!(ev["seq"], 2);
    first.signal("TERM");
    assert_eq!(first.wait().await.code(), Some(0), "{}", first.stderr());
    gw.wait_for(WAIT, |c| c.live_sockets == 0).await.unwrap();

    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["total"], 1);
    assert_eq!(saved["sessions"][0]["shard"], 0);
    assert_eq!(saved["sessions"][0]["session_id"], session.as_str());
    assert_eq!(saved["sessions"][0]["seq"], 2);
    assert_eq!(
        saved["sessions"][0]["resume_gateway_url"],
        mock.url().as_str()
    );

    // An event while no process runs: the next one gets it through the resume replay.
    gw.dispatch(0, "MESSAGE_CREATE", &json!({ "n": 2 }));

    let mut second = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let handshake = second
        .expect_line("a handshake", |v| {
            v["type"] == "ready" || v["type"] == "resumed"
        })
        .await;
    assert_eq!(handshake["type"], "resumed", "{}", second.stdout());
    assert_eq!(handshake["session_id"], session.as_str());
    assert!(!file.exists(), "the session file is used once");
    // Replayed events come before RESUMED.
    let missed: Value = second
        .lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "dispatch")
        .expect("the missed event was replayed");
    assert_eq!(
        (missed["seq"].as_u64(), missed["data"]["n"].as_u64()),
        (Some(3), Some(2))
    );
    let c = gw.counters().shard(0);
    assert_eq!((c.identifies, c.resumes_ok, c.max_live_sockets), (1, 1, 1));

    second.signal("TERM");
    assert_eq!(second.wait().await.code(), Some(0), "{}", second.stderr());
    gw.wait_for(WAIT, |c| c.live_sockets == 0).await.unwrap();
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["sessions"][0]["session_id"], session.as_str());
    assert!(saved["sessions"][0]["seq"].as_u64().unwrap() >= 3);
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_session_file_is_not_resumed() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let dir = temp_dir("stale-session");
    let file = dir.join("sessions.json");
    std::fs::write(
        &file,
        json!({"version":1,"saved_at_ms":1000,"total":1,"sessions":[
            {"shard":0,"session_id":"old","resume_gateway_url":mock.url(),"seq":9}
        ]})
        .to_string(),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap().to_owned();
    let mut run = spawn(
        &["run", "--api-base", &api, "--session-file", &file_arg],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    let handshake = run
        .expect_line("a handshake", |v| {
            v["type"] == "ready" || v["type"] == "resumed"
        })
        .await;
    assert_eq!(handshake["type"], "ready");
    assert_eq!(gw.counters().resumes_unknown_session, 0, "nothing resumed");
    run.signal("INT");
    assert_eq!(run.wait().await.code(), Some(0));
    assert!(
        run.stderr().contains("session file not used"),
        "{}",
        run.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_of_a_fleet_is_handed_over() {
    let mock = MockServer::start(MockConfig {
        shards: 2,
        session_start: SessionStartLimit {
            max_concurrency: 2,
            ..SessionStartLimit::default()
        },
        ..mock_config()
    })
    .await
    .unwrap();
    let gw = mock.handle();
    let api = mock.http_base();
    let dir = temp_dir("fleet-handover");
    let file = dir.join("sessions.json");
    let file_arg = file.to_str().unwrap().to_owned();
    let args = ["run", "--api-base", &api, "--session-file", &file_arg];

    let mut first = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let started = first.expect_type("started").await;
    assert_eq!(
        (started["shards"].clone(), started["total"].clone()),
        (json!([0, 1]), json!(2))
    );
    let a = first.expect_type("ready").await;
    let b = first.expect_type("ready").await;
    let mut ready: Vec<u64> = vec![a["shard"].as_u64().unwrap(), b["shard"].as_u64().unwrap()];
    ready.sort_unstable();
    assert_eq!(ready, vec![0, 1]);
    // A command naming no shard goes to every shard; a raw one must name it.
    first
        .send(r#"{"op":"presence","status":"dnd","id":1}"#)
        .await;
    first.expect_type("ok").await;
    first
        .send(r#"{"op":"raw","payload":{"op":3,"d":null},"id":2}"#)
        .await;
    let err = first.expect_type("error").await;
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("`shard` is required"),
        "{err}"
    );
    first.signal("TERM");
    assert_eq!(first.wait().await.code(), Some(0), "{}", first.stderr());
    gw.wait_for(WAIT, |c| c.live_sockets == 0).await.unwrap();
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["total"], 2);
    assert_eq!(saved["sessions"].as_array().unwrap().len(), 2, "{saved}");

    let mut second = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    for _ in 0..2 {
        let h = second
            .expect_line("a handshake", |v| {
                v["type"] == "ready" || v["type"] == "resumed"
            })
            .await;
        assert_eq!(h["type"], "resumed", "{}", second.stdout());
    }
    for shard in 0..2 {
        let c = gw.counters().shard(shard);
        assert_eq!(
            (c.identifies, c.resumes_ok, c.max_live_sockets),
            (1, 1, 1),
            "shard {shard}"
        );
    }
    second.signal("TERM");
    assert_eq!(second.wait().await.code(), Some(0), "{}", second.stderr());
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_the_gateway_is_unreachable() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let url = mock.url();
    let mut run = spawn(
        &[
            "run",
            "--gateway-url",
            &url,
            "--http",
            "0",
            "--drain-timeout-ms",
            "200",
        ],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    let started = run.expect_type("started").await;
    let addr = started["http"].as_str().unwrap().to_owned();
    run.expect_type("ready").await;
    mock.shutdown().await;
    run.expect_type("socket_closed").await;
    let (code, body) = http(&addr, "GET", "/health").await;
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["healthy"], false);
    assert_ne!(v["shards"][0]["phase"], "receiving");
    let (_, metrics) = http(&addr, "GET", "/metrics").await;
    assert!(metrics.contains("handover_shard_phase{shard=\"0\",phase=\"receiving\"} 0\n"));
    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
}

/// A session file edited to resume elsewhere must not send the RESUME (and the token in it)
/// there: the session is resumed through the configured gateway, and the other listener sees
/// no connection at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_resume_url_never_receives_the_token() {
    let mock = MockServer::start(mock_config()).await.unwrap();
    let gw = mock.handle();
    let url = mock.url();
    let dir = temp_dir("edited-resume-url");
    let file = dir.join("sessions.json");
    let file_arg = file.to_str().unwrap().to_owned();
    let args = ["run", "--gateway-url", &url, "--session-file", &file_arg];

    let mut first = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let ready = first.expect_type("ready").await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    first.signal("TERM");
    assert_eq!(first.wait().await.code(), Some(0), "{}", first.stderr());
    gw.wait_for(WAIT, |c| c.live_sockets == 0).await.unwrap();

    // Someone points the saved session at their own listener.
    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_url = format!("ws://{}", thief.local_addr().unwrap());
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    saved["sessions"][0]["resume_gateway_url"] = Value::String(thief_url.clone());
    std::fs::write(&file, saved.to_string()).unwrap();

    let mut second = spawn(&args, &[("HANDOVER_TOKEN", TOKEN)]);
    let handshake = tokio::select! {
        h = second.expect_line("a handshake", |v| v["type"] == "ready" || v["type"] == "resumed") => h,
        conn = thief.accept() => panic!(
            "the edited resume url got a connection from {:?}\n{}",
            conn.map(|(_, peer)| peer),
            second.stderr()
        ),
    };
    assert_eq!(handshake["type"], "resumed", "{}", second.stdout());
    assert_eq!(handshake["session_id"], session.as_str());
    // A connection attempt would have completed in the listener's backlog by now.
    assert!(
        thief.accept().now_or_never().is_none(),
        "the edited resume url got a connection"
    );
    let c = gw.counters().shard(0);
    assert_eq!((c.identifies, c.resumes_ok), (1, 1));
    second.signal("TERM");
    assert_eq!(second.wait().await.code(), Some(0), "{}", second.stderr());
    let stderr = second.stderr();
    assert!(
        stderr.contains("resuming through the configured gateway instead"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token leaked");
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}

/// The saved file is 0600 whatever the umask says (one that also removes the owner's write
/// bit would otherwise leave 0400), and a stale `PATH.tmp` left by someone is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_file_is_0600_under_any_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockServer::start(mock_config()).await.unwrap();
    let url = mock.url();
    let dir = temp_dir("umask");
    let file = dir.join("sessions.json");
    let old_tmp = dir.join("sessions.json.tmp");
    std::fs::write(&old_tmp, b"").unwrap();
    std::fs::set_permissions(&old_tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    let file_arg = file.to_str().unwrap().to_owned();
    let mut run = cli_common::spawn_with_umask(
        "277",
        &["run", "--gateway-url", &url, "--session-file", &file_arg],
        &[("HANDOVER_TOKEN", TOKEN)],
    );
    run.expect_type("ready").await;
    run.signal("TERM");
    assert_eq!(run.wait().await.code(), Some(0), "{}", run.stderr());
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read(&old_tmp).unwrap(), b"", "not written through");
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}
