//! TLS listeners (`[[server.tls]]`): certificates chosen by SNI, ALPN h2 and http/1.1.
//!
//! ```toml
//! [[server.tls]]
//! listen = "127.0.0.1:8443"
//! certs = [
//!   { cert = "certs/api.pem", key = "certs/api.key" },   # the default: used when no name matches
//!   { cert = "certs/www.pem", key = "certs/www.key" },
//! ]
//! ```
//!
//! Each certificate serves the names it is valid for (its subject alternative names,
//! wildcards included), checked the way a client checks them; a client that sends no
//! SNI, or a name no certificate covers, gets the first. Files are loaded and keys
//! parsed at config load: a missing file or a bad key is a config error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Peek;
use pingora::{Error, ErrorType};

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, CryptoProvider, ResolvesServerCert, ServerName};

/// Certificates of one TLS listener, selected by SNI.
pub(crate) struct SniResolver {
    certs: Vec<(CertificateDer<'static>, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl SniResolver {
    /// Loads `(cert, key)` PEM file pairs; the first is the default.
    ///
    /// # Errors
    /// `(index, message)` of the first pair that cannot be used.
    pub(crate) fn load(pairs: &[(String, String)]) -> Result<Self, (usize, String)> {
        pingora::tls::install_default_crypto_provider();
        let provider =
            CryptoProvider::get_default().ok_or((0, "no TLS crypto provider".to_string()))?;
        let mut certs = Vec::new();
        for (i, (cert, key)) in pairs.iter().enumerate() {
            for f in [cert, key] {
                crate::units::check_material_file(std::path::Path::new(f)).map_err(|e| (i, e))?;
            }
            let loaded = pingora::tls::load_certs_and_key_files(cert, key)
                .map_err(|e| (i, format!("cannot load {cert} / {key}: {e}")))?
                .ok_or_else(|| {
                    (
                        i,
                        format!("{cert} has no certificate or {key} no private key"),
                    )
                })?;
            let (chain, key_der) = loaded;
            let signing = provider
                .key_provider
                .load_private_key(key_der)
                .map_err(|e| (i, format!("unusable private key {key}: {e}")))?;
            let leaf = chain
                .first()
                .cloned()
                .ok_or_else(|| (i, format!("{cert} has no certificate")))?;
            webpki::EndEntityCert::try_from(&leaf)
                .map_err(|e| (i, format!("{cert}: not a valid certificate: {e}")))?;
            certs.push((
                leaf.into_owned(),
                Arc::new(CertifiedKey::new(chain, signing)),
            ));
        }
        if certs.is_empty() {
            return Err((0, "a TLS listener needs at least one certificate".into()));
        }
        Ok(Self { certs })
    }

    /// The certificate for `sni`: the first valid for that name, else the first.
    pub(crate) fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni.and_then(|n| ServerName::try_from(n.to_string()).ok()) {
            for (der, key) in &self.certs {
                let valid = webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok());
                if valid {
                    return key.clone();
                }
            }
        }
        self.certs[0].1.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// One TLS listener, ready to serve.
#[derive(Debug, Clone)]
pub(crate) struct TlsListener {
    /// The address to listen on.
    pub addr: std::net::SocketAddr,
    /// Its certificates.
    pub resolver: Arc<SniResolver>,
    /// The certificate and key files they were read from, in order.
    pub files: Vec<(String, String)>,
    /// Client certificates asked for (`client_ca`), when configured.
    pub client: Option<ClientAuth>,
}

/// Most certificates in a `client_ca` file.
const MAX_CLIENT_CAS: usize = 1000;

/// A listener's client certificate verification (`client_ca`, `client_auth`).
#[derive(Clone)]
pub(crate) struct ClientAuth {
    /// The rustls verifier: chain to a `client_ca` certificate, valid now, and allowed
    /// for client authentication (an EKU, when present, includes `clientAuth`).
    pub(crate) verifier: Arc<dyn pingora::tls::ClientCertVerifier>,
    /// The CA file's contents and whether a client may come without a certificate
    /// (what tells a changed setting, for `needs_restart`).
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) optional: bool,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// A verifier trusting the CA certificates in `pem` (1 to 1,000 of them).
    ///
    /// # Errors
    /// No certificate, too many, or one unusable as a trust anchor.
    pub(crate) fn load(pem: &[u8], optional: bool) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        pingora::tls::install_default_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the file".into());
        }
        if certs.len() > MAX_CLIENT_CAS {
            return Err(format!("more than {MAX_CLIENT_CAS} certificates"));
        }
        let mut roots = pingora::tls::RootCertStore::empty();
        for (i, c) in certs.into_iter().enumerate() {
            roots
                .add(c)
                .map_err(|e| format!("certificate {} is unusable as a trust anchor: {e}", i + 1))?;
        }
        let provider =
            CryptoProvider::get_default().ok_or_else(|| "no TLS crypto provider".to_string())?;
        let mut builder = pingora::tls::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        if optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            verifier,
            ca_pem: pem.to_vec(),
            optional,
        })
    }
}

/// Keeps the verified client certificate of a connection, parsed once when the
/// handshake completes, in its TLS digest (for `mtls_auth` and the access log).
pub(crate) struct KeepClientCert;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for KeepClientCert {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let cert = crate::client_cert::ClientCertificate::from_der(tls.peer_certificate_der()?)?;
        Some(Arc::new(Arc::new(cert)))
    }
}

/// Drops a TLS connection whose client sends nothing (no ClientHello) within its
/// deadline, as the connection guard closes a plain connection that sends nothing within
/// `header_timeout`. The guard sees a TLS connection's bytes only after the handshake,
/// and Pingora bounds the handshake by a fixed 60 s alone. Runs once per TLS connection,
/// before the handshake (Pingora's pre-TLS hook); the byte it waits for is put back.
/// On Pingora's timer, as the guard's deadlines are (a tokio timer armed per connection
/// makes every wait of the worker threads set a timeout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HelloDeadline(pub Duration);

#[async_trait::async_trait]
impl PreTlsProcess for HelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let mut first = [0u8; 1];
        match pingora::time::timeout(self.0, stream.try_peek(&mut first)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "before a TLS ClientHello", e),
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                "no TLS ClientHello within header_timeout",
            ),
        }
    }
}

/// Loads the CA certificates of a PEM file, for verifying upstream TLS.
///
/// # Errors
/// A message when the file cannot be read or holds no valid CA certificate.
pub(crate) fn load_ca_file(
    path: &std::path::Path,
) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    use rustls_pki_types::pem::PemObject;
    crate::units::check_material_file(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} has no certificate", path.display()));
    }
    let mut out = Vec::new();
    for der in certs {
        webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        out.push(pingora::utils::tls::WrappedX509::new(
            der.to_vec(),
            pingora::utils::tls::parse_x509,
        ));
    }
    Ok(Arc::from(out.into_boxed_slice()))
}

/// What a connection to an upstream's backends needs for TLS: on or off, the CAs that
/// verify the backends (`ca_file`; `None`: the system's), and the certificate the
/// gateway presents when a backend asks for one (`[upstreams.X.tls] client_cert`).
#[derive(Clone, Default)]
pub(crate) struct PeerTls {
    pub(crate) on: bool,
    pub(crate) ca: Option<Arc<pingora::protocols::tls::CaType>>,
    pub(crate) client_cert: Option<Arc<pingora::utils::tls::CertKey>>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("on", &self.on)
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl PeerTls {
    /// Gives `peer` the CAs and the client certificate.
    pub(crate) fn apply(&self, peer: &mut pingora::upstreams::peer::HttpPeer) {
        self.apply_ca(&mut peer.options);
        if self.client_cert.is_some() {
            peer.client_cert_key = self.client_cert.clone();
        }
    }

    /// Gives a peer's options the CAs (a TCP check's peer has no client certificate).
    pub(crate) fn apply_ca(&self, options: &mut pingora::upstreams::peer::PeerOptions) {
        if self.ca.is_some() {
            options.ca = self.ca.clone();
        }
    }
}

/// Loads a client certificate chain and its key (PEM; the key PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// `(key, message)`: the file (`client_cert` or `client_key`) that cannot be used, or
/// `client_key` when the key does not match the certificate.
pub(crate) fn load_client_cert(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<Arc<pingora::utils::tls::CertKey>, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    pingora::tls::install_default_crypto_provider();
    let read = |key: &'static str, p: &std::path::Path| {
        crate::units::check_material_file(p).map_err(|e| (key, e))?;
        std::fs::read(p).map_err(|e| (key, format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read("client_cert", cert_file)?;
    let key_pem = read("client_key", key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ("client_cert", format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(("client_cert", "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "client_key",
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = CryptoProvider::get_default()
        .ok_or(("client_key", "no TLS crypto provider".to_string()))?;
    CertifiedKey::from_der(certs.clone(), key.clone_key(), provider).map_err(|e| {
        (
            "client_key",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    let chain = certs.iter().map(|c| c.to_vec()).collect();
    Ok(Arc::new(pingora::utils::tls::CertKey::new(
        chain,
        key.secret_der().to_vec(),
    )))
}
