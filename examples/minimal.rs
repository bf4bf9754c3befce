//! The smallest program built on the library: a gateway served from a config file.
//!
//! ```sh
//! cargo run -p tollgate-bin --example minimal -- examples/quickstart.toml
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: minimal CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match tollgate::GatewayBuilder::new().build_from_file(&path) {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("{e}"); // every config error, as FILE:LINE:COL: key: message
            return ExitCode::from(1);
        }
    };
    let mut server = gateway.pingora_server(false);
    gateway.add_to(&mut server);
    gateway.run(server); // until SIGTERM (drains), SIGQUIT (hands over, drains) or SIGINT
    ExitCode::SUCCESS
}
