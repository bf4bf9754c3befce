//! A demo upstream for the quickstart: answers every request with JSON describing
//! what it received. Next to it, a demo OpenID Connect provider (discovery, a JWKS, and
//! `GET /token`: a token for subject `alice`), for the quickstart's `jwt_auth` route.
//!
//! Run with `cargo run -p tollgate-tests --example demo_upstream -- 127.0.0.1:9001 demo 127.0.0.1:9002`.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let name = args.next().unwrap_or_else(|| "demo".into());
    let idp_addr = args.next().unwrap_or_else(|| "127.0.0.1:9002".into());
    let up = tollgate_tests::Upstream::start_on(&addr, &name).await;
    eprintln!("demo upstream {name:?} listening on {}", up.addr);
    let idp = tollgate_tests::idp::demo_provider(&idp_addr).await;
    eprintln!(
        "demo identity provider on {} (token: GET /token)",
        idp.issuer()
    );
    std::future::pending::<()>().await;
}
