//! Consumers (`[consumers.NAME]`) and their credentials, indexed for the
//! authentication policies.
//!
//! - API keys are indexed by their SHA-256 digest: a look-up is one hash-map probe
//!   whatever the number of consumers, and only digests are ever compared, so response
//!   timing can tell how a presented key's digest compares with the stored ones, never
//!   how the key does: a key cannot be guessed a byte at a time.
//! - Basic credentials are indexed by user name; passwords are verified against an
//!   argon2 or bcrypt hash, and an unknown user is checked against a dummy hash so it
//!   costs the same as a known one.
//! - JWT subjects map a claim value to a consumer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use rustc_hash::FxBuildHasher;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// An authenticated consumer (`[consumers.NAME]`).
#[derive(Clone)]
pub struct Consumer {
    /// The consumer's name (the table key); sent upstream as `X-Consumer-Name`.
    pub name: String,
    /// The consumer's groups, for `acl`.
    pub groups: Vec<String>,
    /// `name` as the `X-Consumer-Name` value, made when the consumer is indexed
    /// ([`Consumers::insert`]), after which it no longer changes.
    name_header: Option<HeaderValue>,
}

impl Consumer {
    /// A consumer with groups.
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            name: name.into(),
            groups,
            name_header: None,
        }
    }

    /// The name as a header value (`X-Consumer-Name`); `None` when the name cannot be
    /// one (configured names always can).
    pub fn name_header(&self) -> Option<HeaderValue> {
        match &self.name_header {
            Some(v) => Some(v.clone()),
            None => HeaderValue::from_str(&self.name).ok(),
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish()
    }
}

/// A password hash in PHC (argon2) or modular crypt (bcrypt `$2a$`/`$2b$`/`$2y$`) form.
#[derive(Clone)]
pub enum PasswordHash {
    /// `$argon2id$...` (or argon2i / argon2d).
    Argon2(String),
    /// `$2b$...`.
    Bcrypt(String),
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Argon2(_) => "Argon2(***)",
            Self::Bcrypt(_) => "Bcrypt(***)",
        })
    }
}

impl PasswordHash {
    /// Parses and checks a hash string.
    ///
    /// # Errors
    /// A message saying what is wrong, without echoing the hash.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("$argon2") {
            let ph =
                argon2::PasswordHash::new(s).map_err(|e| format!("invalid argon2 hash: {e}"))?;
            argon2::Algorithm::try_from(ph.algorithm)
                .map_err(|e| format!("invalid argon2 hash: {e}"))?;
            argon2::Params::try_from(&ph)
                .map_err(|e| format!("invalid argon2 hash parameters: {e}"))?;
            if ph.salt.is_none() || ph.hash.is_none() {
                return Err("invalid argon2 hash: a salt and a hash are required".into());
            }
            Ok(Self::Argon2(s.to_string()))
        } else if s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$") {
            s.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("invalid bcrypt hash: {e}"))?;
            Ok(Self::Bcrypt(s.to_string()))
        } else {
            Err("expected an argon2 ($argon2id$...) or bcrypt ($2b$...) hash".into())
        }
    }

    /// Checks `password` against the hash. Slow by design: call it off the event loop.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|ph| {
                    argon2::Argon2::default()
                        .verify_password(password, &ph)
                        .is_ok()
                })
            }
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

/// The dummy hash checked for unknown users (argon2id, default parameters, of a
/// random password), so that an unknown user name costs as much as a known one.
const DUMMY_ARGON2: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yHYoN9Hp0VXgxIkvRIvm3ZZr3eZnC1JrKU9ypW1pz0k";

/// Every consumer of one configuration, indexed by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    by_name: BTreeMap<String, Arc<Consumer>>,
    by_key: HashMap<KeyDigest, Arc<Consumer>, FxBuildHasher>,
    by_user: HashMap<String, (Arc<Consumer>, PasswordHash)>,
    by_subject: HashMap<String, Arc<Consumer>>,
    /// `mtls.san` values as written, and in ASCII lower case (for DNS names).
    by_san: HashMap<String, Arc<Consumer>>,
    by_san_lower: HashMap<String, Vec<Arc<Consumer>>>,
    by_cn: HashMap<String, Arc<Consumer>>,
}

/// Which consumers a client certificate names ([`Consumers::by_certificate`]).
#[derive(Debug, Clone)]
pub enum CertMatch {
    /// None.
    None,
    /// Exactly this one.
    One(Arc<Consumer>),
    /// Several: the certificate authenticates nobody.
    Several,
}

/// SHA-256 of a secret: what the indexes keep and compare instead of the secret.
pub(crate) fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// An API key's SHA-256 digest, as the key of the index. Its hash is its first eight
/// bytes: they are uniformly distributed already, and no client can choose them, so
/// hashing them again (SipHash costs more than the probe) buys nothing.
#[derive(Debug, PartialEq, Eq)]
struct KeyDigest([u8; 32]);

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(digest_prefix(&self.0));
    }
}

/// The first eight bytes of a SHA-256 digest, as a ready-made hash of it (uniformly
/// distributed, and no client can choose them).
pub(crate) fn digest_prefix(digest: &[u8; 32]) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Compares two secrets in constant time (their SHA-256 digests, so lengths leak nothing
/// either).
pub(crate) fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

impl Consumers {
    /// Adds a consumer. Credentials are added with the `with_*` methods.
    pub fn insert(&mut self, mut consumer: Consumer) -> Arc<Consumer> {
        consumer.name_header = HeaderValue::from_str(&consumer.name).ok();
        let c = Arc::new(consumer);
        self.by_name.insert(c.name.clone(), c.clone());
        c
    }

    /// Gives `consumer` an API key. Returns the other consumer that already has it.
    pub fn add_api_key(&mut self, consumer: &Arc<Consumer>, key: &str) -> Option<Arc<Consumer>> {
        self.by_key
            .insert(KeyDigest(digest(key.as_bytes())), consumer.clone())
            .filter(|o| o.name != consumer.name)
    }

    /// Gives `consumer` Basic credentials. Returns the other consumer with that user name.
    pub fn add_basic(
        &mut self,
        consumer: &Arc<Consumer>,
        user: &str,
        hash: PasswordHash,
    ) -> Option<Arc<Consumer>> {
        self.by_user
            .insert(user.to_string(), (consumer.clone(), hash))
            .map(|(o, _)| o)
    }

    /// Maps a JWT subject to `consumer`. Returns the other consumer with that subject.
    pub fn add_subject(
        &mut self,
        consumer: &Arc<Consumer>,
        subject: &str,
    ) -> Option<Arc<Consumer>> {
        self.by_subject
            .insert(subject.to_string(), consumer.clone())
    }

    /// Identifies `consumer` by a client certificate SAN. Returns the other consumer
    /// with that value.
    pub fn add_mtls_san(&mut self, consumer: &Arc<Consumer>, san: &str) -> Option<Arc<Consumer>> {
        if let Some(other) = self.by_san.get(san) {
            return Some(other.clone());
        }
        self.by_san.insert(san.to_string(), consumer.clone());
        self.by_san_lower
            .entry(san.to_ascii_lowercase())
            .or_default()
            .push(consumer.clone());
        None
    }

    /// Identifies `consumer` by a client certificate's Common Name. Returns the other
    /// consumer with that value.
    pub fn add_mtls_cn(&mut self, consumer: &Arc<Consumer>, cn: &str) -> Option<Arc<Consumer>> {
        if let Some(other) = self.by_cn.get(cn) {
            return Some(other.clone());
        }
        self.by_cn.insert(cn.to_string(), consumer.clone());
        None
    }

    /// The consumers a verified client certificate names (identity.md §3.6): one of
    /// whose `san` values equals a DNS (ASCII case-insensitively), URI or email SAN of
    /// the certificate, or whose `cn` equals its one Common Name.
    pub fn by_certificate(&self, cert: &crate::client_cert::ClientCertificate) -> CertMatch {
        use crate::client_cert::San;
        fn note<'a>(found: &mut Vec<&'a Arc<Consumer>>, c: &'a Arc<Consumer>) {
            if !found.iter().any(|f| f.name == c.name) {
                found.push(c);
            }
        }
        let mut found: Vec<&Arc<Consumer>> = Vec::new();
        for san in &cert.sans {
            match san {
                San::Dns(d) => {
                    for c in self
                        .by_san_lower
                        .get(&d.to_ascii_lowercase())
                        .into_iter()
                        .flatten()
                    {
                        note(&mut found, c);
                    }
                }
                San::Uri(v) | San::Email(v) => {
                    if let Some(c) = self.by_san.get(v) {
                        note(&mut found, c);
                    }
                }
                _ => {}
            }
        }
        if let Some(c) = cert.common_name().and_then(|cn| self.by_cn.get(cn)) {
            note(&mut found, c);
        }
        match found.as_slice() {
            [] => CertMatch::None,
            [one] => CertMatch::One((*one).clone()),
            _ => CertMatch::Several,
        }
    }

    /// The consumer with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// Number of consumers.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are no consumers.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Consumer names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The consumer owning API key `key`: one hash probe on the key's SHA-256 digest,
    /// so its time does not depend on how much of a key matches.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_key.get(&KeyDigest(digest(key)))
    }

    /// The consumer whose JWT subject is `subject`.
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.by_subject.get(subject)
    }

    /// Verifies Basic credentials. Blocking and slow by design (password hashing):
    /// call from a blocking task. Unknown users are checked against a dummy hash.
    pub fn verify_basic(&self, user: &str, password: &[u8]) -> Option<Arc<Consumer>> {
        match self.by_user.get(user) {
            Some((c, h)) => h.verify(password).then(|| c.clone()),
            None => {
                let _ = PasswordHash::Argon2(DUMMY_ARGON2.into()).verify(password);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Consumer {
        Consumer::new("alice", vec!["partners".into()])
    }

    #[test]
    fn api_keys_are_found_by_value_only() {
        let mut cs = Consumers::default();
        let a = cs.insert(alice());
        assert!(cs.add_api_key(&a, "k-alice-1").is_none());
        assert_eq!(
            cs.by_api_key(b"k-alice-1").map(|c| c.name.as_str()),
            Some("alice")
        );
        assert!(cs.by_api_key(b"k-alice-2").is_none());
        assert!(cs.by_api_key(b"").is_none());
        let b = cs.insert(Consumer::new("bob", vec![]));
        assert_eq!(
            cs.add_api_key(&b, "k-alice-1").map(|c| c.name.clone()),
            Some("alice".into())
        );
    }

    #[test]
    fn many_keys_each_find_their_own_consumer() {
        let mut cs = Consumers::default();
        let owners: Vec<_> = (0..1000)
            .map(|i| cs.insert(Consumer::new(format!("c{i}"), vec![])))
            .collect();
        for (i, c) in owners.iter().enumerate() {
            assert!(cs.add_api_key(c, &format!("key-{i}")).is_none());
        }
        for i in 0..1000 {
            let found = cs.by_api_key(format!("key-{i}").as_bytes());
            assert_eq!(found.map(|c| c.name.clone()), Some(format!("c{i}")));
        }
        assert!(cs.by_api_key(b"key-1000").is_none());
    }

    #[test]
    fn the_name_header_is_made_once_and_only_when_the_name_can_be_one() {
        let mut cs = Consumers::default();
        let a = cs.insert(alice());
        assert!(a.name_header.is_some(), "made when indexed");
        assert_eq!(a.name_header().unwrap(), "alice");
        // not indexed: made on demand
        assert_eq!(alice().name_header().unwrap(), "alice");
        let odd = cs.insert(Consumer::new("line\nbreak", vec![]));
        assert_eq!(odd.name_header(), None);
    }

    #[test]
    fn dummy_hash_is_a_valid_argon2_hash() {
        assert!(matches!(
            PasswordHash::parse(DUMMY_ARGON2),
            Ok(PasswordHash::Argon2(_))
        ));
    }

    #[test]
    fn verifies_argon2_and_bcrypt_and_refuses_bad_hashes() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let h = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        let ph = PasswordHash::parse(&h).unwrap();
        assert!(ph.verify(b"s3cret"));
        assert!(!ph.verify(b"wrong"));
        let b = bcrypt::hash("s3cret", 4).unwrap();
        let pb = PasswordHash::parse(&b).unwrap();
        assert!(pb.verify(b"s3cret"));
        assert!(!pb.verify(b"s3creT"));
        assert!(PasswordHash::parse("plaintext").is_err());
        assert!(PasswordHash::parse("$argon2id$nonsense").is_err());
        assert!(PasswordHash::parse("$2b$04$short").is_err());
        assert_eq!(format!("{ph:?}"), "Argon2(***)");
    }

    #[test]
    fn basic_verification_knows_users() {
        let mut cs = Consumers::default();
        let a = cs.insert(alice());
        cs.add_basic(
            &a,
            "alice",
            PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap(),
        );
        assert_eq!(
            cs.verify_basic("alice", b"pw").map(|c| c.name.clone()),
            Some("alice".into())
        );
        assert!(cs.verify_basic("alice", b"nope").is_none());
        assert!(cs.verify_basic("mallory", b"pw").is_none());
    }
}
