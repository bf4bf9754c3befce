//! Protocols through the gateway: WebSocket upgrades and h2c prior knowledge.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn websocket_upgrades_are_proxied_both_ways() {
    let up = Upstream::start("ws").await;
    let gw = gateway(&format!(
        "{}[routes.ws]\npaths = [\"/ws\"]\nupstream = \"ws\"\n",
        upstream_table("ws", &[up.addr])
    ));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&websocket_upgrade("/ws/chat")).await.unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"second frame", &[0u8, 159, 146, 150]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_is_accepted() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/h2\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for i in 0..3 {
        let r = c
            .get(gw.url(&format!("/h2/{i}")))
            .header("x-request-id", format!("h2-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], format!("h2-{i}").as_str());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["target"], format!("/h2/{i}"));
    }
    let r = c.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 404)
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_route");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn grpc_unary_calls_pass_over_http2_with_trailers_intact() {
    let grpc = GrpcUpstream::start().await;
    let gw = gateway(&format!(
        "[upstreams.grpc]\nbackends = [\"{}\"]\nhttp2 = true\n\
         [routes.greeter]\npaths = [\"/helloworld.Greeter\"]\nupstream = \"grpc\"\n",
        grpc.addr
    ));
    for name in ["world", "tollgate"] {
        let (status, ct, msg, trailers) =
            grpc_call(gw.addr, "/helloworld.Greeter/SayHello", name.as_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(ct, "application/grpc");
        assert_eq!(&msg[..], name.as_bytes());
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{trailers:?}"
        );
        assert_eq!(
            trailers.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"echo"[..])
        );
    }
    let calls = grpc.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for (path, version, te) in calls {
        assert_eq!(path, "/helloworld.Greeter/SayHello");
        assert_eq!(
            version, "HTTP/2.0",
            "the upstream was not spoken to in HTTP/2"
        );
        assert_eq!(te.as_deref(), Some("trailers"));
    }
}

#[tokio::test]
async fn a_tonic_client_and_server_talk_grpc_through_the_gateway() {
    let server = OtlpCollector::start().await;
    let gw = gateway(&format!(
        "[upstreams.otlp]\nbackends = [\"{}\"]\nhttp2 = true\n\
         [routes.traces]\npaths = [\"/opentelemetry.proto.collector.trace.v1.TraceService\"]\n\
         upstream = \"otlp\"\n",
        server.addr
    ));
    let trace = [7u8; 16];
    otlp_export(gw.addr, trace, 3)
        .await
        .expect("unary call through the gateway");
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, s)| s.trace_id == trace));
    assert_eq!(got[2].1.name, "span-2");

    // an error status (sent in trailers) reaches the client intact
    let err = otlp_export(gw.addr, trace, 0).await.unwrap_err();
    assert_eq!(
        err,
        (
            "InvalidArgument".to_string(),
            "no resource spans".to_string()
        )
    );
    assert_eq!(server.received().len(), 3);
}
