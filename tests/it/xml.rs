//! transform.md §3.7: `xml_json` against a real upstream on loopback.

use crate::support::*;

/// A gateway whose route `r` (every path) has `xml_json` with these lines.
fn converting(up: &Upstream, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.xml_json]\n{policy}",
        upstream_table("a", &[up.addr])
    ))
}

fn post_xml(gw: &Gateway, ctype: &str, body: &[u8]) -> reqwest::RequestBuilder {
    client()
        .post(gw.url("/orders"))
        .header("content-type", ctype)
        .body(body.to_vec())
}

#[tokio::test]
async fn an_xml_request_body_reaches_the_upstream_as_json() {
    let up = Upstream::start("a").await;
    let gw = converting(&up, "");
    let xml = r#"<?xml version="1.0"?><order id="7"><item sku="a"/><item sku="b">x</item><note>hi &amp; bye</note></order>"#;
    let a = send(post_xml(&gw, "application/xml", xml.as_bytes()).header("content-md5", "x")).await;
    assert_eq!(a.status, 200);
    let seen = up.last().unwrap();
    let body = String::from_utf8(seen.body.clone()).unwrap();
    assert_eq!(
        body,
        r##"{"order":{"@id":"7","item":[{"@sku":"a"},{"@sku":"b","#text":"x"}],"note":"hi & bye"}}"##
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("content-length"),
        Some(&*body.len().to_string())
    );
    assert_eq!(seen.header("content-md5"), None);
    // other bodies pass untouched
    let a = send(post_xml(&gw, "text/plain", b"<a/>")).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().unwrap().body, b"<a/>");
    let log = access_log(&gw, 2).await;
    assert_eq!(log[0]["xml_request"], "converted");
    assert_eq!(log[1]["xml_request"], serde_json::Value::Null);
    assert_eq!(
        sample(
            &gw,
            "tollgate_xml_conversions_total{direction=\"request\",outcome=\"converted\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn hostile_xml_is_refused_before_the_upstream_is_asked() {
    let up = Upstream::start("a").await;
    let gw = converting(&up, "max_depth = 3\nmax_body = 2000\n");
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><lolz>&lol9;</lolz>",
        (1..10)
            .map(|i| format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&lol{};", i - 1).repeat(10)
            ))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "application/xml",
            b"<!DOCTYPE a SYSTEM \"file:///etc/passwd\"><a>&xxe;</a>".to_vec(),
        ),
        ("application/xml", laughs.into_bytes()),
        ("text/xml", b"<a>&nbsp;</a>".to_vec()),
        ("application/xml", b"<a>&#1;</a>".to_vec()),
        ("application/xml; charset=iso-8859-1", b"<a/>".to_vec()),
        (
            "application/xml",
            b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>".to_vec(),
        ),
        ("application/xml", b"\xFF\xFE<\0a\0/\0>\0".to_vec()),
        ("application/soap+xml", b"<a><b></a></b>".to_vec()),
        ("application/xml", b"<a/><b/>".to_vec()),
        ("application/xml", b"<a><b><c><d/></c></b></a>".to_vec()),
    ];
    for (ctype, body) in &cases {
        let a = send(post_xml(&gw, ctype, body)).await;
        assert_eq!(a.status, 400, "{ctype}: {}", String::from_utf8_lossy(body));
        let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(j["error"], "bad_request");
        assert!(
            !j["message"].as_str().unwrap().contains("passwd"),
            "no echo"
        );
    }
    let a = send(post_xml(&gw, "application/xml", &vec![b' '; 2001])).await;
    assert_eq!(a.status, 413);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    assert_eq!(
        sample(
            &gw,
            "tollgate_xml_conversions_total{direction=\"request\",outcome=\"invalid\",route=\"r\"}"
        )
        .await,
        Some(cases.len() as f64)
    );
}

const EXPECTED: &str = r#"<?xml version="1.0" encoding="UTF-8"?><response lang="en"><id>7</id><tags>a</tags><tags>b</tags><none/></response>"#;

/// The contract's example JSON, as the upstream's answer.
fn example_path() -> String {
    let json = r#"{"id":7,"@lang":"en","tags":["a","b"],"none":null}"#;
    format!(
        "/respond?body={}&header=etag:%22e%22",
        form_urlencoded::byte_serialize(json.as_bytes()).collect::<String>()
    )
}

fn varies_on_accept(a: &Answer) -> bool {
    a.headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept"))
}

#[tokio::test]
async fn a_client_that_prefers_xml_gets_the_json_response_as_xml() {
    let up = Upstream::start("a").await;
    let gw = converting(&up, "");
    let a = send(
        client()
            .get(gw.url(&example_path()))
            .header("accept", "application/json;q=0.5, text/xml")
            .header("accept-encoding", "gzip")
            .header("range", "bytes=0-1"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(String::from_utf8(a.body.clone()).unwrap(), EXPECTED);
    assert_eq!(a.header("content-type"), Some("text/xml; charset=utf-8"));
    assert_eq!(a.header("etag"), None);
    assert!(varies_on_accept(&a));
    let seen = up.last().unwrap();
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(seen.header("range"), None);
    // a client that prefers JSON gets the upstream's answer as it is, with Vary
    let a = send(
        client()
            .get(gw.url(&example_path()))
            .header("accept", "application/xml;q=0.1, application/json"),
    )
    .await;
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("etag"), Some("\"e\""));
    assert!(varies_on_accept(&a));
    assert_eq!(
        up.last().unwrap().header("accept"),
        Some("application/xml;q=0.1, application/json")
    );
    let log = access_log(&gw, 2).await;
    assert_eq!(log[0]["xml_response"], "converted");
    assert_eq!(log[1]["xml_response"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_conversion_that_cannot_complete_is_aborted_never_sent_complete_looking() {
    let up = Upstream::start("a").await;
    let gw = converting(&up, "max_body = 100\n");
    let ask = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: h\r\nAccept: application/xml\r\nConnection: close\r\n\r\n")
    };
    // not valid JSON, found only at the end of the body
    let r = raw(
        gw.addr,
        ask("/respond?body=%7B%22a%22%3A1%2C%22a%22%3A2%7D").as_bytes(),
    )
    .await;
    assert!(
        !r.body.ends_with(b"0\r\n\r\n"),
        "no final chunk: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("</response>"));
    // the XML would pass 4 x max_body (each `1,` becomes `<item>1</item>`)
    let list = format!("[{}1]", "1,".repeat(45));
    let path = format!(
        "/respond?body={}",
        form_urlencoded::byte_serialize(list.as_bytes()).collect::<String>()
    );
    let r = raw(gw.addr, ask(&path).as_bytes()).await;
    assert!(!r.body.ends_with(b"0\r\n\r\n"));
    // over max_body by Content-Length: forwarded as JSON, untouched
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
    let path = format!(
        "/respond?body={}",
        form_urlencoded::byte_serialize(big.as_bytes()).collect::<String>()
    );
    let a = send(
        client()
            .get(gw.url(&path))
            .header("accept", "application/xml"),
    )
    .await;
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.body, big.as_bytes());
    let log = access_log(&gw, 3).await;
    let aborted = log
        .iter()
        .filter(|l| l["error"] == "response_aborted")
        .count();
    assert_eq!(aborted, 2, "{log:?}");
    for (outcome, n) in [("invalid", 1.0), ("too_large", 2.0)] {
        assert_eq!(
            sample(
                &gw,
                &format!("tollgate_xml_conversions_total{{direction=\"response\",outcome=\"{outcome}\",route=\"r\"}}")
            )
            .await,
            Some(n),
            "{outcome}"
        );
    }
    let warned = eventually(std::time::Duration::from_secs(5), async || {
        let lines = gw.stderr_lines();
        let n = lines
            .iter()
            .filter(|l| l.contains("xml_json: route r") && l.contains("aborted"))
            .count();
        n == 2
    })
    .await;
    assert!(warned, "one warning line per aborted response");
}

#[tokio::test]
async fn check_refuses_a_policy_that_does_nothing_and_a_bad_root() {
    let err = check_fails(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.xml_json]\nrequest = false\nresponse = false\nroot = \"a b\"\nmax_body = \"65MiB\"\n",
    );
    for want in [
        "routes.r.policies.xml_json: request and response are both false",
        ":11:1: routes.r.policies.xml_json.root: root \"a b\" is not an element name",
        "routes.r.policies.xml_json.max_body: max_body 68157440 is out of range",
    ] {
        assert!(err.contains(want), "missing {want}\nin {err}");
    }
}

#[tokio::test]
async fn validate_and_request_body_see_the_converted_json() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.xml_json]\nresponse = false\n\
         [routes.r.policies.request_body]\nset = {{ \"/source\" = \"xml\" }}\n\
         [routes.r.policies.validate.methods.POST.body_schema]\n\
         type = \"object\"\nrequired = [\"order\"]\nproperties = {{ order = {{ type = \"object\", required = [\"@id\"] }} }}\n",
        upstream_table("a", &[up.addr])
    ));
    let a = send(post_xml(
        &gw,
        "application/xml",
        br#"<order id="7"><note>hi</note></order>"#,
    ))
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        up.last().unwrap().body,
        br#"{"order":{"@id":"7","note":"hi"},"source":"xml"}"#,
        "converted (14), validated (15), then edited (16)"
    );
    let a = send(post_xml(
        &gw,
        "text/xml",
        b"<order><note>no id</note></order>",
    ))
    .await;
    assert_eq!(a.status, 400);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["error"], "validation_failed");
    assert_eq!(j["details"][0]["path"], "/order/@id");
    assert_eq!(up.count(), 1);
}
