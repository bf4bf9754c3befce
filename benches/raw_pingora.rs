//! The engine's own ceiling for `just bench-load`: the smallest Pingora reverse proxy
//! (every request to one fixed backend, no policy, no header edits), built from this
//! workspace with the same profile and allocator as the `tollgate` binary.
//!
//! usage: `raw_pingora LISTEN_ADDR UPSTREAM_ADDR` (one worker thread)

use tollgate::async_trait;
use tollgate::pingora::prelude::*;
use tollgate::pingora::server::configuration::ServerConf;

#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)] // audited: a GlobalAlloc over mimalloc's C calls
#[path = "../gateway-bin/src/allocator.rs"]
mod allocator;
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

struct Fixed {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: raw_pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let tag = listen.replace([':', '.'], "_");
    let conf = ServerConf {
        threads: 1,
        pid_file: format!("/tmp/raw_pingora_{tag}.pid"),
        upgrade_sock: format!("/tmp/raw_pingora_{tag}.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Fixed { upstream });
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
