//! A policy that rewrites the response body as it streams: JSON members named in the
//! config are removed from JSON responses before the client sees them.
//!
//! ```toml
//! [routes.users.policies.redact]
//! fields = ["password_hash", "ssn"]   # required: top-level members to remove
//! max_body = 1048576                  # default 1 MiB: larger responses pass unchanged
//! ```
//!
//! The policy holds a JSON response's pieces (`response_body_filter` gets each as it
//! arrives) up to `max_body`, then sends the edited document at the end. A response
//! that is larger, compressed, or not valid JSON is sent as the upstream sent it, never
//! cut. Its length changes, so `Content-Length` goes and the body is sent chunked.
//!
//! ```sh
//! cargo run -p tollgate-bin --example redact -- gateway.toml
//! ```

use std::process::ExitCode;

use serde::Deserialize;
use tollgate::bytes::{Bytes, BytesMut};
use tollgate::pingora::http::ResponseHeader;
use tollgate::policy::{BuildCtx, BuildError, Policy, PolicyConfig};
use tollgate::{async_trait, GatewayBuilder, RequestCtx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactConfig {
    fields: Vec<String>,
    #[serde(default = "default_max")]
    max_body: usize,
}

fn default_max() -> usize {
    1 << 20
}

struct Redact {
    fields: Vec<String>,
    max_body: usize,
}

/// This request's response, while it is being held.
#[derive(Clone)]
enum Holding {
    Json(BytesMut),
    /// Over `max_body`: the rest passes through.
    Passing,
}

impl PolicyConfig for RedactConfig {
    type Policy = Redact;

    fn build(self, _cx: &BuildCtx<'_>) -> Result<Redact, BuildError> {
        if self.fields.is_empty() {
            return Err(BuildError::field("fields", "name at least one field"));
        }
        Ok(Redact {
            fields: self.fields,
            max_body: self.max_body,
        })
    }
}

impl Redact {
    /// The document without the configured members, or `None` to send it unchanged.
    fn edit(&self, body: &[u8]) -> Option<Bytes> {
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let obj = doc.as_object_mut()?;
        for f in &self.fields {
            obj.remove(f);
        }
        serde_json::to_vec(&doc).ok().map(Bytes::from)
    }
}

#[async_trait]
impl Policy for Redact {
    fn response_filter(
        &self,
        cx: &mut RequestCtx,
        resp: &mut ResponseHeader,
    ) -> tollgate::pingora::Result<()> {
        let h = &resp.headers;
        let json = h
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        let encoded = h.contains_key(http::header::CONTENT_ENCODING);
        let length = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if json && !encoded && length.is_none_or(|n| n <= self.max_body) {
            cx.extensions.insert(Holding::Json(BytesMut::new()));
            // the edited body has another length: no Content-Length, chunked
            tollgate::policy::body_length_changes(resp)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> tollgate::pingora::Result<()> {
        let Some(Holding::Json(held)) = cx.extensions.get_mut::<Holding>() else {
            return Ok(());
        };
        if let Some(piece) = body.take() {
            if held.len() + piece.len() > self.max_body {
                // too large to hold: what was held, then the rest, unchanged
                let mut out = std::mem::take(held);
                out.extend_from_slice(&piece);
                *body = Some(out.freeze());
                cx.extensions.insert(Holding::Passing);
                return Ok(());
            }
            held.extend_from_slice(&piece);
        }
        if end_of_stream {
            let whole = std::mem::take(held).freeze();
            *body = Some(self.edit(&whole).unwrap_or(whole));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: redact CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<RedactConfig>("redact")
        .build_from_file(&path)
    {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut server = gateway.pingora_server(false);
    gateway.add_to(&mut server);
    gateway.run(server);
    ExitCode::SUCCESS
}

/// The policy tested on its own, without a server (`tollgate::testing`, the
/// `test-util` feature).
#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::testing::{PolicyTest, TestRequest};

    fn json_head(len: usize) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        h.insert_header("content-length", len.to_string()).unwrap();
        h
    }

    #[tokio::test]
    async fn removes_the_fields_from_a_json_body_sent_in_pieces() {
        let test = PolicyTest::from_toml::<RedactConfig>("redact", r#"fields = ["ssn"]"#).unwrap();
        let mut out = test.run(TestRequest::get("/users/1")).await.unwrap();
        let body = br#"{"name":"ann","ssn":"123-45-6789"}"#;
        let (a, b) = body.split_at(10);
        let r = out.respond(json_head(body.len()), &[a, b]).unwrap();
        assert_eq!(&r.body[..], br#"{"name":"ann"}"#);
        assert!(r.head.headers.get("content-length").is_none());
    }

    #[tokio::test]
    async fn a_body_over_max_body_passes_unchanged() {
        let test =
            PolicyTest::from_toml::<RedactConfig>("redact", "fields = [\"ssn\"]\nmax_body = 16")
                .unwrap();
        let mut out = test.run(TestRequest::get("/users/1")).await.unwrap();
        let body = br#"{"name":"ann","ssn":"123-45-6789"}"#;
        let (a, b) = body.split_at(10);
        // no length given: held until it is over the cap, then passed on whole
        let mut head = json_head(0);
        head.remove_header("content-length");
        let r = out.respond(head, &[a, b]).unwrap();
        assert_eq!(&r.body[..], body);
    }

    #[test]
    fn an_empty_field_list_is_refused() {
        let e = PolicyTest::from_toml::<RedactConfig>("redact", "fields = []").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("fields"));
    }
}
