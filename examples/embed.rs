//! Embedding: a program that already runs a Pingora server with its own proxy adds the
//! gateway as one more set of services. The gateway keeps its own listeners (and admin
//! listener, if its config has one); the program's own `ProxyHttp` is untouched.
//!
//! ```sh
//! # own proxy on 127.0.0.1:7000 forwarding to 127.0.0.1:9001; gateway per gateway.toml
//! cargo run -p tollgate-bin --example embed -- gateway.toml 127.0.0.1:7000 127.0.0.1:9001
//! ```

use std::process::ExitCode;

use tollgate::pingora::prelude::*;
use tollgate::pingora::server::configuration::ServerConf;
use tollgate::{async_trait, GatewayBuilder};

/// The program's own proxy: everything to one backend.
struct Legacy {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Legacy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, listen, backend] = args.as_slice() else {
        eprintln!("usage: embed GATEWAY.toml OWN_LISTEN_ADDR OWN_BACKEND_ADDR");
        return ExitCode::from(2);
    };

    // the server as the program already builds it, with its own service. Pingora's own
    // grace period (300 s by default) and shutdown timeout come after the gateway's
    // drain (`[server] grace_period`, `graceful_shutdown_timeout`), so they are zero here
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut legacy = http_proxy_service(
        &server.configuration,
        Legacy {
            backend: backend.clone(),
        },
    );
    legacy.add_tcp(listen);
    server.add_service(legacy);
    eprintln!("embed: own proxy listening on {listen}");

    // the gateway: its config's routes, listeners, admin and policies
    let gateway = match GatewayBuilder::new().build_from_file(config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    gateway.add_to(&mut server);

    // until SIGTERM or SIGQUIT (the gateway drains as its config says) or SIGINT
    gateway.run(server);
    ExitCode::SUCCESS
}
