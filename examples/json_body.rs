//! A policy that needs whole bodies: it reads the JSON request body before the request
//! goes upstream (refusing what is not JSON, removing members the upstream must not
//! see) and stamps the request id into JSON responses.
//!
//! ```toml
//! [routes.orders.policies.json_body]
//! request = true                   # default; false: leave request bodies alone
//! remove = ["debug", "internal"]   # top-level request members the upstream never sees
//! max_body = 1048576               # default 1 MiB: larger request bodies get 413
//! stamp = true                     # default false: add "request_id" to JSON object responses
//! ```
//!
//! The gateway reads the request body once (however many policies need it), answers 413
//! `payload_too_large` past `max_body` and 503 `overloaded` when `[server.limits]
//! body_buffer_total` is taken, and sends the edited body upstream with its own
//! `Content-Length`. Responses up to `max_body` are held whole for the stamp; larger ones
//! pass as they come.
//!
//! ```sh
//! cargo run -p tollgate-bin --example json_body -- gateway.toml
//! ```

use std::process::ExitCode;

use serde::Deserialize;
use tollgate::bytes::Bytes;
use tollgate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig};
use tollgate::{async_trait, ErrorCode, GatewayBuilder, Reply, RequestCtx, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBodyConfig {
    #[serde(default = "yes")]
    request: bool,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default = "default_max")]
    max_body: usize,
    #[serde(default)]
    stamp: bool,
}

fn default_max() -> usize {
    1 << 20
}

fn yes() -> bool {
    true
}

struct JsonBody {
    request: bool,
    remove: Vec<String>,
    max_body: usize,
    stamp: bool,
}

impl PolicyConfig for JsonBodyConfig {
    type Policy = JsonBody;

    fn build(self, _cx: &BuildCtx<'_>) -> Result<JsonBody, BuildError> {
        if self.max_body == 0 || self.max_body > 64 << 20 {
            return Err(BuildError::field(
                "max_body",
                "max_body must be 1 byte to 64 MiB",
            ));
        }
        Ok(JsonBody {
            request: self.request,
            remove: self.remove,
            max_body: self.max_body,
            stamp: self.stamp,
        })
    }
}

#[async_trait]
impl Policy for JsonBody {
    fn request_body_limit(&self) -> Option<usize> {
        self.request.then_some(self.max_body)
    }

    async fn request_body(
        &self,
        _session: &mut Session,
        _cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> tollgate::pingora::Result<Flow> {
        if body.is_empty() {
            return Ok(Flow::Continue);
        }
        let mut doc: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Flow::Respond(Reply::refuse_with(
                    ErrorCode::BadRequest,
                    format!("the body is not JSON: {e}"),
                )))
            }
        };
        if let Some(obj) = doc.as_object_mut() {
            for m in &self.remove {
                obj.remove(m);
            }
        }
        *body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        Ok(Flow::Continue)
    }

    fn response_body_limit(&self) -> Option<usize> {
        self.stamp.then_some(self.max_body)
    }

    fn response_body(
        &self,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> tollgate::pingora::Result<()> {
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(()); // not JSON: sent as it came
        };
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("request_id".into(), cx.request_id.clone().into());
            *body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: json_body CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<JsonBodyConfig>("json_body")
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
