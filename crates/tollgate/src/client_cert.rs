//! The verified client certificate of a mutual-TLS connection, as policies see it: its
//! SHA-256, its subject in RFC 4514 form, its Common Names and its subject alternative
//! names (identity.md §3.6). Parsed once per connection, when the handshake completes.

use std::fmt::Write;
use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Most subject alternative names looked at.
pub(crate) const MAX_SANS: usize = 64;

/// One subject alternative name of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum San {
    /// A DNS name.
    Dns(String),
    /// A URI.
    Uri(String),
    /// An email address (`rfc822Name`).
    Email(String),
    /// An IP address.
    Ip(IpAddr),
}

/// A verified client certificate of a mutual-TLS connection, parsed once per connection
/// ([`RequestCtx::client_certificate`](crate::policy::RequestCtx::client_certificate)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Lower-case hex SHA-256 of the certificate's DER, without separators.
    pub sha256: String,
    /// The subject in RFC 4514 form: most specific RDN first, `,` without spaces,
    /// RFC 4514 escaping (`CN=orders-svc,O=Acme`).
    pub subject: String,
    /// The subject's Common Names (usually one).
    pub common_names: Vec<String>,
    /// The subject alternative names in certificate order (at most 64 are read).
    pub sans: Vec<San>,
}

impl ClientCertificate {
    /// Parses a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sha256 = Sha256::digest(der)
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        let subject = rfc4514(cert.subject());
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in ext.value.general_names.iter().take(MAX_SANS) {
                let san = match name {
                    GeneralName::DNSName(d) => San::Dns((*d).to_string()),
                    GeneralName::URI(u) => San::Uri((*u).to_string()),
                    GeneralName::RFC822Name(e) => San::Email((*e).to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => continue,
                    },
                    _ => continue,
                };
                sans.push(san);
            }
        }
        Some(Self {
            sha256,
            subject,
            common_names,
            sans,
        })
    }

    /// The one Common Name of the subject; `None` when it has none or several.
    pub fn common_name(&self) -> Option<&str> {
        match self.common_names.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The SANs as `DNS:name`, `URI:uri`, `email:addr`, `IP:addr` joined by `,`, a `,`
    /// inside a value written `%2C`.
    pub fn san_list(&self) -> String {
        let parts: Vec<String> = self
            .sans
            .iter()
            .map(|s| {
                let (kind, v) = match s {
                    San::Dns(v) => ("DNS", v.clone()),
                    San::Uri(v) => ("URI", v.clone()),
                    San::Email(v) => ("email", v.clone()),
                    San::Ip(ip) => ("IP", ip.to_string()),
                };
                format!("{kind}:{}", v.replace(',', "%2C"))
            })
            .collect();
        parts.join(",")
    }
}

/// The client certificate kept with a connection when its TLS handshake completed
/// (by the listener of a `client_ca`), from the connection's digest.
pub(crate) fn of_connection(
    digest: Option<&pingora::protocols::Digest>,
) -> Option<std::sync::Arc<ClientCertificate>> {
    let ssl = digest?.ssl_digest.as_ref()?;
    ssl.extension
        .get::<std::sync::Arc<ClientCertificate>>()
        .cloned()
}

/// The short names of RFC 4514 §3.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// A distinguished name in RFC 4514 form.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::ToDer;
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            let attrs: Vec<String> = rdn
                .iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    match (short_name(&oid), a.as_str()) {
                        (Some(short), Ok(v)) => format!("{short}={}", escape(v)),
                        _ => {
                            let der = a.attr_value().to_der_vec().unwrap_or_default();
                            let hex = der.iter().fold(String::new(), |mut s, b| {
                                let _ = write!(s, "{b:02x}");
                                s
                            });
                            format!("{}=#{hex}", short_name(&oid).unwrap_or(&oid))
                        }
                    }
                })
                .collect();
            attrs.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 §2.4 escaping of a string value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4514_escaping() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(escape(" pad "), "\\ pad\\ ");
        assert_eq!(
            escape("quote\"semi;lt<gt>back\\"),
            "quote\\\"semi\\;lt\\<gt\\>back\\\\"
        );
    }

    #[test]
    fn sans_are_listed_with_their_kind_and_commas_escaped() {
        let c = ClientCertificate {
            sha256: String::new(),
            subject: String::new(),
            common_names: vec!["a".into(), "b".into()],
            sans: vec![
                San::Dns("orders.internal".into()),
                San::Uri("spiffe://acme/orders,x".into()),
                San::Email("ops@acme.test".into()),
                San::Ip("10.0.0.1".parse().unwrap()),
            ],
        };
        assert_eq!(
            c.san_list(),
            "DNS:orders.internal,URI:spiffe://acme/orders%2Cx,email:ops@acme.test,IP:10.0.0.1"
        );
        assert_eq!(c.common_name(), None, "several CNs name nobody");
    }

    #[test]
    fn not_a_certificate_is_none() {
        assert!(ClientCertificate::from_der(b"garbage").is_none());
    }
}
