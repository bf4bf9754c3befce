//! A demo upstream for the quickstart: answers every request with JSON describing
//! what it received.
//!
//! Run with `cargo run -p tollgate-tests --example demo_upstream -- 127.0.0.1:9001 demo`.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let name = args.next().unwrap_or_else(|| "demo".into());
    let up = tollgate_tests::Upstream::start_on(&addr, &name).await;
    eprintln!("demo upstream {name:?} listening on {}", up.addr);
    std::future::pending::<()>().await;
}
