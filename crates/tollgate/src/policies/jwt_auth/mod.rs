//! `jwt_auth`: authenticate a consumer with a signed JWT.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.jwt_auth]
//! algorithms = ["RS256"]                 # required; the only algorithms accepted
//! public_key_file = "keys/issuer.pem"    # or: secret = "...", or: jwks_file = "keys/jwks.json"
//! issuer = "https://issuer.example"      # optional; when set, `iss` is required and must match
//! audience = ["orders", "billing"]       # optional, string or list; `aud` must contain one
//! leeway = "30s"                         # default: clock skew allowed on exp / nbf
//! claim = "sub"                          # default: the claim naming the consumer (jwt_subject)
//! header = "authorization"               # default: `Authorization: Bearer <token>`
//! cookie = "session"                     # optional: also read the token from this cookie
//! hide_credentials = true                # default: the token is not forwarded
//! cache_size = 1024                      # default: verified tokens remembered; 0: none
//! scopes = ["orders:read"]               # optional: every one must be granted (403 otherwise)
//! claims_to_headers = { sub = "x-user-id" }   # optional: claims sent upstream as headers
//! anonymous = "guests"                   # optional: a valid token naming no consumer
//! ```
//!
//! Keys may also come from an identity provider: `jwks_url = "https://…"` or
//! `discovery = true` (with `issuer`), refreshed in the background (`jwks_refresh`,
//! `jwks_min_refetch`, `jwks_max_stale`, `jwks_timeout`, `jwks_ca_file`); see the
//! `remote` module and `docs/config.md`. Until the first fetch, a well-formed token gets
//! 503 `identity_unavailable`, never 401.
//!
//! Key material is loaded and checked at config load: a bad PEM or JWKS, a secret
//! shorter than its algorithm's hash, an RSA key under 2048 bits, or algorithms of
//! another family (or, for ECDSA, another curve) than the key are config errors. A
//! token is refused with 401 `unauthorized` (`WWW-Authenticate: Bearer`) when it is
//! missing, larger than 8 KiB, unsigned (`alg: none`), signed with an algorithm not in
//! `algorithms` or not matching the key's family (so an HS256 token "signed" with an
//! RSA public key fails), has a `crit` header, a bad signature, no `exp`, is expired or
//! not yet valid (beyond `leeway`), has the wrong `iss`/`aud`, names an unknown `kid`,
//! or names no known consumer.
//!
//! A token that passed is remembered (by its SHA-256 digest, in `cache_size` slots, until
//! its `exp` plus `leeway`), so that a client presenting it again does not pay for the
//! signature again: a signature costs tens of microseconds (RS256, ES256, EdDSA; see
//! [`crate::jwt_crypto`]), a look-up well under one. A remembered token is still refused
//! once expired, and its consumer is looked up again each time (a reload builds a new
//! policy, so a changed key or consumer set starts from an empty cache). Envoy's
//! `jwt_authn` does the same (`jwt_cache_config`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::consumer::{Consumer, Consumers};
use crate::context::RequestCtx;
use crate::policy::{identity, BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};
use crate::units::ConfigDuration;

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Largest `cache_size`.
const MAX_CACHE_SIZE: usize = 1 << 20;

// === Config ===

/// `jwt_auth` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Accepted algorithms (`HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, …). Required.
    pub algorithms: Vec<String>,
    /// Shared secret for HS* algorithms.
    pub secret: Option<String>,
    /// PEM public key for RS*/PS*/ES*/EdDSA, relative to the config file.
    pub public_key_file: Option<String>,
    /// JWKS document; the token's `kid` picks the key. Relative to the config file.
    pub jwks_file: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted audiences; the token's `aud` must contain one.
    pub audience: Option<Audience>,
    /// Clock skew allowed on `exp` and `nbf`. Default: `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    /// The claim naming the consumer. Default: `sub`.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// The header carrying the token. Default: `authorization` (with `Bearer `).
    #[serde(default = "default_header")]
    pub header: String,
    /// A cookie carrying the token, tried when the header is absent.
    pub cookie: Option<String>,
    /// Remove the token before forwarding. Default: `true`.
    #[serde(default = "crate::policies::default_true")]
    pub hide_credentials: bool,
    /// Verified tokens remembered, so a repeated token skips its signature check.
    /// Default: 1024; 0 turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// A JWKS document to fetch keys from (`http` or `https`).
    pub jwks_url: Option<String>,
    /// Find the JWKS by OpenID Connect discovery of `issuer`.
    #[serde(default)]
    pub discovery: bool,
    /// Background refresh interval of a remote key set. Default `5m`.
    pub jwks_refresh: Option<ConfigDuration>,
    /// At most one unknown-`kid` refetch per this interval. Default `10s`.
    pub jwks_min_refetch: Option<ConfigDuration>,
    /// How long the last good key set is used while fetches fail. Default `24h`.
    pub jwks_max_stale: Option<ConfigDuration>,
    /// One fetch's timeout. Default `2s`.
    pub jwks_timeout: Option<ConfigDuration>,
    /// CAs (PEM) trusted for `https` discovery and JWKS fetches instead of the
    /// platform's.
    pub jwks_ca_file: Option<String>,
    /// Scopes the token must grant, every one.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims sent upstream as headers: `{ claim = "x-header" }`.
    #[serde(default)]
    pub claims_to_headers: std::collections::BTreeMap<String, String>,
    /// The consumer a valid token that names no consumer authenticates as.
    pub anonymous: Option<String>,
}

fn default_cache_size() -> usize {
    1024
}
fn default_leeway() -> ConfigDuration {
    ConfigDuration::new(std::time::Duration::from_secs(30))
}
fn default_claim() -> String {
    "sub".into()
}
fn default_header() -> String {
    "authorization".into()
}

pub use crate::policy::identity::{Audience, Claims};

fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn read(cx: &BuildCtx<'_>, field: &str, file: &str) -> Result<Vec<u8>, BuildError> {
    let path = cx.config_dir.join(file);
    crate::units::check_material_file(&path).map_err(|e| BuildError::field(field, e))?;
    std::fs::read(&path)
        .map_err(|e| BuildError::field(field, format!("cannot read {}: {e}", path.display())))
}

impl PolicyConfig for JwtAuthConfig {
    type Policy = JwtAuth;

    fn build(self, cx: &BuildCtx<'_>) -> Result<JwtAuth, BuildError> {
        crate::jwt_crypto::install();
        if self.algorithms.is_empty() {
            return Err(BuildError::field(
                "algorithms",
                "at least one algorithm is required",
            ));
        }
        let mut algs = Vec::new();
        for a in &self.algorithms {
            let alg = Algorithm::from_str(a).map_err(|_| {
                BuildError::field(
                    "algorithms",
                    format!("unknown algorithm {a:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                )
            })?;
            algs.push(alg);
        }
        let mut base = Validation::new(algs[0]);
        base.algorithms = algs.clone();
        base.leeway = self.leeway.get().as_secs();
        base.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            base.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(Audience(list)) if !list.is_empty() => {
                base.set_audience(list);
                required.push("aud");
            }
            Some(_) => return Err(BuildError::field("audience", "give at least one audience")),
            None => base.validate_aud = false,
        }
        base.set_required_spec_claims(&required);

        let sources = [
            self.secret.is_some(),
            self.public_key_file.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.discovery,
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(BuildError::new(
                "give exactly one of secret, public_key_file, jwks_file, jwks_url, discovery = true",
            ));
        }
        let scopes = identity::Scopes::new("scopes", &self.scopes)?;
        let claim_headers =
            identity::ClaimHeaders::new("claims_to_headers", &self.claims_to_headers)?;
        let anonymous = match &self.anonymous {
            Some(a) => Some(cx.consumer("anonymous", a)?),
            None => None,
        };
        let remote = self.discovery || self.jwks_url.is_some();
        if !remote {
            for (key, given) in [
                ("jwks_refresh", self.jwks_refresh.is_some()),
                ("jwks_min_refetch", self.jwks_min_refetch.is_some()),
                ("jwks_max_stale", self.jwks_max_stale.is_some()),
                ("jwks_timeout", self.jwks_timeout.is_some()),
                ("jwks_ca_file", self.jwks_ca_file.is_some()),
            ] {
                if given {
                    return Err(BuildError::field(key, "only with jwks_url or discovery"));
                }
            }
        }
        let family_validation =
            |family: AlgorithmFamily, field: &str| -> Result<Validation, BuildError> {
                let mut v = base.clone();
                v.algorithms.retain(|a| a.family() == family);
                if v.algorithms.len() != algs.len() {
                    return Err(BuildError::field(
                        field,
                        format!("this key is for {family:?} algorithms; algorithms lists others"),
                    ));
                }
                Ok(v)
            };
        let keys = if remote {
            Keys::Remote(remote::build(&self, &algs, cx)?)
        } else if let Some(secret) = &self.secret {
            let v = family_validation(AlgorithmFamily::Hmac, "secret")?;
            if let Some(short) = algs.iter().find(|a| secret.len() < min_secret_len(**a)) {
                return Err(BuildError::field(
                    "secret",
                    format!(
                        "a {short:?} secret needs at least {} bytes",
                        min_secret_len(*short)
                    ),
                ));
            }
            Keys::Single(DecodingKey::from_secret(secret.as_bytes()), v)
        } else if let Some(file) = &self.public_key_file {
            let pem = read(cx, "public_key_file", file)?;
            let family = algs[0].family();
            let key = match family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                AlgorithmFamily::Hmac => {
                    return Err(BuildError::field(
                        "public_key_file",
                        "HS* algorithms use `secret`, not a public key",
                    ))
                }
            }
            .map_err(|e| {
                BuildError::field(
                    "public_key_file",
                    format!("not a valid {family:?} public key PEM: {e}"),
                )
            })?;
            crate::jwt_crypto::check_key(&key)
                .map_err(|e| BuildError::field("public_key_file", e))?;
            // another family is refused below; of this family, ES256/ES384 need their curve
            if let Some(a) = algs
                .iter()
                .find(|a| a.family() == family && !crate::jwt_crypto::fits(&key, **a))
            {
                return Err(BuildError::field(
                    "algorithms",
                    format!("{a:?} does not fit this key's curve"),
                ));
            }
            Keys::Single(key, family_validation(family, "algorithms")?)
        } else {
            let file = self.jwks_file.as_deref().unwrap_or_default();
            let raw = read(cx, "jwks_file", file)?;
            let set: JwkSet = serde_json::from_slice(&raw).map_err(|e| {
                BuildError::field("jwks_file", format!("not a valid JWKS document: {e}"))
            })?;
            let mut by_kid = HashMap::new();
            let mut sole = None;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    BuildError::field("jwks_file", format!("unusable key in JWKS: {e}"))
                })?;
                let mut v = base.clone();
                v.algorithms.retain(|a| crate::jwt_crypto::fits(&key, *a));
                if let Some(ka) = jwk.common.key_algorithm {
                    let name = format!("{ka:?}");
                    v.algorithms.retain(|a| format!("{a:?}") == name);
                }
                let kid = jwk.common.key_id.clone();
                crate::jwt_crypto::check_key(&key).map_err(|e| {
                    BuildError::field(
                        "jwks_file",
                        format!("key {:?}: {e}", kid.clone().unwrap_or_default()),
                    )
                })?;
                if v.algorithms.is_empty() {
                    return Err(BuildError::field(
                        "jwks_file",
                        format!(
                            "key {:?} fits none of the configured algorithms",
                            kid.unwrap_or_default()
                        ),
                    ));
                }
                match kid {
                    Some(kid) if by_kid.contains_key(&kid) => {
                        return Err(BuildError::field(
                            "jwks_file",
                            format!("duplicate kid {kid:?}"),
                        ));
                    }
                    Some(kid) => {
                        by_kid.insert(kid, (key.clone(), v.clone()));
                    }
                    None if set.keys.len() > 1 => {
                        return Err(BuildError::field(
                            "jwks_file",
                            "every key needs a kid when there are several",
                        ))
                    }
                    None => {}
                }
                if set.keys.len() == 1 {
                    sole = Some((key, v));
                }
            }
            if set.keys.is_empty() {
                return Err(BuildError::field("jwks_file", "the JWKS has no keys"));
            }
            Keys::Set { by_kid, sole }
        };
        let header = HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            BuildError::field("header", format!("invalid header name {:?}", self.header))
        })?;
        if self.claim.is_empty() {
            return Err(BuildError::field("claim", "the claim name cannot be empty"));
        }
        if self.cache_size > MAX_CACHE_SIZE {
            return Err(BuildError::field(
                "cache_size",
                format!("cache_size must be at most {MAX_CACHE_SIZE}"),
            ));
        }
        Ok(JwtAuth {
            cache: VerifiedTokens::new(self.cache_size),
            base,
            algorithms: algs,
            scopes,
            claim_headers,
            anonymous,
            keys,
            bearer: header == http::header::AUTHORIZATION,
            header,
            cookie: self.cookie.filter(|c| !c.is_empty()),
            claim: self.claim,
            hide: self.hide_credentials,
        })
    }
}

// === Policy ===

mod remote;

/// The usable keys of a JWKS document, for the fuzz target (identity.md §3.1 item 5).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn usable_jwks_keys(doc: &serde_json::Value) -> usize {
    let all = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    remote::usable(doc, &all).map_or(0, |keys| keys.len())
}

enum Keys {
    Single(DecodingKey, Validation),
    Set {
        by_kid: HashMap<String, (DecodingKey, Validation)>,
        sole: Option<(DecodingKey, Validation)>,
    },
    /// Fetched from a JWKS URL or by discovery, in the background.
    Remote(Arc<remote::RemoteKeys>),
}

/// Tokens that passed verification lately: direct-mapped (a token's digest picks one
/// slot, and a newer token there replaces the older), bounded, and lock-free (a slot is
/// swapped whole).
struct VerifiedTokens {
    slots: Box<[ArcSwapOption<Verified>]>,
}

/// A token that passed.
struct Verified {
    digest: [u8; 32],
    token: Token,
    /// `exp` plus the leeway, in seconds since the Unix epoch: the last second it passes.
    valid_until: u64,
    /// The version of the key set that verified it (a changed set verifies again).
    version: u64,
}

/// What a verified token says.
#[derive(Clone)]
pub(crate) struct Token {
    /// Its claims.
    claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Token {
    fn subject(&self, claim: &str) -> Option<&str> {
        self.claims.get(claim).and_then(|v| v.as_str())
    }
}

impl VerifiedTokens {
    /// `None` for size 0 (no cache).
    fn new(size: usize) -> Option<Self> {
        (size > 0).then(|| Self {
            slots: (0..size).map(|_| ArcSwapOption::empty()).collect(),
        })
    }

    fn slot(&self, digest: &[u8; 32]) -> &ArcSwapOption<Verified> {
        let i = crate::consumer::digest_prefix(digest) % self.slots.len() as u64;
        &self.slots[i as usize]
    }

    /// The token with `digest` if it passed with key set `version` and has not
    /// expired by `now`.
    fn get(&self, digest: &[u8; 32], now: u64, version: u64) -> Option<Token> {
        let entry = self.slot(digest).load();
        entry
            .as_ref()
            .filter(|e| e.digest == *digest && now <= e.valid_until && e.version == version)
            .map(|e| e.token.clone())
    }

    fn remember(&self, entry: Verified) {
        self.slot(&entry.digest).store(Some(Arc::new(entry)));
    }
}

/// Why a token was not verified.
enum Refused {
    /// 401 with this message.
    Invalid(&'static str),
    /// The key set is unavailable: 503.
    Unavailable,
    /// Its `kid` is not in the remote set (`seen`: the fetches done when it was looked
    /// up).
    UnknownKid { seen: u64 },
}

/// Authenticates with a signed JWT.
pub struct JwtAuth {
    cache: Option<VerifiedTokens>,
    keys: Keys,
    /// The claims checks (issuer, audience, leeway) for remote keys.
    base: Validation,
    algorithms: Vec<Algorithm>,
    scopes: identity::Scopes,
    claim_headers: identity::ClaimHeaders,
    anonymous: Option<Arc<str>>,
    header: HeaderName,
    bearer: bool,
    cookie: Option<String>,
    claim: String,
    hide: bool,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("header", &self.header)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// The value of cookie `name` in `Cookie` headers.
fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl JwtAuth {
    fn token<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        if let Some(v) = headers.get(&self.header).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            let token = match v.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Some(t.trim()),
                _ if self.bearer => None,
                _ => Some(v),
            };
            if token.is_some() {
                return token;
            }
        }
        self.cookie
            .as_deref()
            .and_then(|c| cookie_value(headers, c))
    }

    /// Verifies `token` (or finds it verified lately) and finds its consumer, without
    /// waiting: a remote key set is used as it is (an unknown `kid` is refused, not
    /// refetched). The error is the client message.
    pub fn verify(
        &self,
        token: &str,
        consumers: &Consumers,
    ) -> Result<Arc<Consumer>, &'static str> {
        let t = self.check(token).map_err(|r| match r {
            Refused::Invalid(m) => m,
            Refused::Unavailable => "the key set is unavailable",
            Refused::UnknownKid { .. } => "unknown key id",
        })?;
        let subject = t.subject(&self.claim).ok_or("token names no consumer")?;
        consumers
            .by_subject(subject)
            .cloned()
            .ok_or("token subject is not a known consumer")
    }

    /// Verifies `token`, refetching a remote key set once (within its bounds) for an
    /// unknown `kid`.
    async fn check_fetching(&self, token: &str) -> Result<Token, Refused> {
        match self.check(token) {
            Err(Refused::UnknownKid { seen }) => {
                let Keys::Remote(keys) = &self.keys else {
                    return Err(Refused::Invalid("unknown key id"));
                };
                if keys.refetch(seen).await == remote::Refetch::No {
                    return Err(Refused::Invalid("unknown key id"));
                }
                match self.check(token) {
                    Err(Refused::UnknownKid { .. }) => Err(Refused::Invalid("unknown key id")),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Verifies `token`, or finds it verified lately with the same keys.
    fn check(&self, token: &str) -> Result<Token, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::Invalid("token too large"));
        }
        let Some(cache) = &self.cache else {
            return self.verify_signed(token).map(|(t, _)| t);
        };
        let digest = crate::consumer::digest(token.as_bytes());
        let now = jsonwebtoken::get_current_timestamp();
        let version = match &self.keys {
            Keys::Remote(k) => k.version(),
            _ => 0,
        };
        if let Some(t) = cache.get(&digest, now, version) {
            return Ok(t);
        }
        let (token, (valid_until, version)) = self.verify_signed(token)?;
        if let Some(valid_until) = valid_until {
            cache.remember(Verified {
                digest,
                token: token.clone(),
                valid_until,
                version,
            });
        }
        Ok(token)
    }

    /// Checks `token` in full: the token, and (when its `exp` is known) the last
    /// second it passes with the version of the keys that verified it.
    fn verify_signed(&self, token: &str) -> Result<(Token, (Option<u64>, u64)), Refused> {
        let invalid = Refused::Invalid;
        let mut parts = token.split('.');
        let (Some(head), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("malformed token"));
        };
        let head: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(invalid("malformed token"))?;
        if head.get("crit").is_some() {
            return Err(invalid("token uses critical header extensions"));
        }
        if head
            .get("alg")
            .and_then(|a| a.as_str())
            .is_some_and(|a| a.eq_ignore_ascii_case("none"))
        {
            return Err(invalid("unsigned tokens are not accepted"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("token algorithm not allowed"))?;
        let decode = |key: &DecodingKey, validation: &Validation| {
            if !validation.algorithms.contains(&header.alg) {
                return Err("token algorithm not allowed");
            }
            let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, key, validation,
            )
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidIssuer => "wrong token issuer",
                ErrorKind::InvalidAudience => "wrong token audience",
                ErrorKind::MissingRequiredClaim(_) => {
                    "token lacks a required claim (exp, iss or aud)"
                }
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::InvalidAlgorithm => "token algorithm not allowed",
                _ => "malformed token",
            })?;
            let valid_until = data
                .claims
                .get("exp")
                .and_then(|v| v.as_u64())
                .map(|exp| exp.saturating_add(validation.leeway));
            Ok((
                Token {
                    claims: Arc::new(data.claims),
                },
                valid_until,
            ))
        };
        let (key, validation) = match &self.keys {
            Keys::Single(k, v) => (k, v),
            Keys::Set { by_kid, sole } => match header.kid.as_deref() {
                Some(kid) => by_kid
                    .get(kid)
                    .map(|(k, v)| (k, v))
                    .ok_or(invalid("unknown key id"))?,
                None => sole
                    .as_ref()
                    .map(|(k, v)| (k, v))
                    .ok_or(invalid("token has no key id"))?,
            },
            Keys::Remote(keys) => {
                if !self.algorithms.contains(&header.alg) {
                    return Err(invalid("token algorithm not allowed"));
                }
                let mut v = self.base.clone();
                v.algorithms = vec![header.alg];
                let found = keys.find(header.kid.as_deref(), header.alg, |key, version| {
                    decode(key, &v).map(|(t, until)| (t, (until, version)))
                });
                return match found {
                    Ok(r) => r.map_err(invalid),
                    Err(remote::Miss::NoSet) => Err(Refused::Unavailable),
                    Err(remote::Miss::UnknownKid { seen }) => Err(Refused::UnknownKid { seen }),
                    Err(remote::Miss::Invalid(m)) => Err(invalid(m)),
                };
            }
        };
        decode(key, validation)
            .map(|(t, until)| (t, (until, 0)))
            .map_err(invalid)
    }
}

fn challenge(message: &str) -> Flow {
    Flow::Respond(Reply::refuse_with(ErrorCode::Unauthorized, message).header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    ))
}

#[async_trait]
impl Policy for JwtAuth {
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let Some(token) = self.token(&session.req_header().headers) else {
            return Ok(challenge("missing bearer token"));
        };
        let token = match self.check_fetching(token).await {
            Ok(t) => t,
            Err(Refused::Unavailable) => {
                return Ok(Flow::Respond(identity::unavailable(
                    "the key set of this route is not available yet",
                )))
            }
            Err(Refused::Invalid(m)) => return Ok(challenge(m)),
            Err(Refused::UnknownKid { .. }) => return Ok(challenge("unknown key id")),
        };
        if !self.scopes.granted(&token.claims) {
            return Ok(Flow::Respond(self.scopes.refusal()));
        }
        let found = token
            .subject(&self.claim)
            .and_then(|s| cx.consumers().by_subject(s).cloned());
        self.claim_headers.apply(&token.claims, cx);
        if let Some(c) = found {
            cx.consumer = Some(c);
            // for later policies (ext_authz's input), only when this policy authenticated
            cx.extensions.insert(Claims(token.claims.clone()));
            return Ok(Flow::Continue);
        }
        if let Some(c) = self
            .anonymous
            .as_deref()
            .and_then(|a| cx.consumers().get(a))
        {
            cx.offer_anonymous(c.clone());
        }
        Ok(challenge(match token.subject(&self.claim) {
            Some(_) => "token subject is not a known consumer",
            None => "token names no consumer",
        }))
    }

    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if !self.hide {
            return Ok(());
        }
        req.remove_header(&self.header);
        if let Some(name) = &self.cookie {
            let kept: Vec<String> = req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k != name))
                .map(str::to_string)
                .collect();
            req.remove_header(&http::header::COOKIE);
            if !kept.is_empty() {
                req.insert_header(http::header::COOKIE, kept.join("; "))?;
            }
        }
        Ok(())
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.claim_headers.names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn cx() -> BuildCtx<'static> {
        BuildCtx::new(std::path::Path::new("."), "p")
    }

    fn config(src: &str) -> JwtAuthConfig {
        toml::from_str(src).unwrap()
    }

    fn consumers() -> Consumers {
        let mut cs = Consumers::default();
        let a = cs.insert(Consumer::new("alice", vec![]));
        cs.add_subject(&a, "alice-sub");
        cs
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn policy(extra: &str) -> JwtAuth {
        config(&format!(
            "algorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n{extra}"
        ))
        .build(&cx())
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_token_and_maps_the_subject() {
        let p = policy("");
        let t = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        assert_eq!(p.verify(&t, &consumers()).unwrap().name, "alice");
    }

    fn digest(token: &str) -> [u8; 32] {
        crate::consumer::digest(token.as_bytes())
    }

    #[test]
    fn a_verified_token_is_remembered_until_exp_plus_leeway() {
        let p = policy("leeway = \"5s\"");
        let cs = consumers();
        let exp = now() + 60;
        let t = hs(serde_json::json!({"sub": "alice-sub", "exp": exp}));
        let cache = p.cache.as_ref().unwrap();
        let remembered = |at| {
            cache
                .get(&digest(&t), at, 0)
                .map(|t| t.subject("sub").unwrap().to_string())
        };
        assert_eq!(remembered(now()), None, "not before it passed");
        assert_eq!(p.verify(&t, &cs).unwrap().name, "alice");
        assert_eq!(remembered(now()).as_deref(), Some("alice-sub"));
        assert_eq!(remembered(exp + 5).as_deref(), Some("alice-sub"));
        assert_eq!(remembered(exp + 6), None, "expired, leeway included");
        // a hit still looks the consumer up: another consumer set may not know it
        assert_eq!(p.verify(&t, &cs).unwrap().name, "alice");
        assert_eq!(
            p.verify(&t, &Consumers::default()).unwrap_err(),
            "token subject is not a known consumer"
        );
    }

    #[test]
    fn refused_tokens_are_not_remembered_and_a_slot_holds_one_token() {
        let p = policy("cache_size = 1");
        let cs = consumers();
        let cache = p.cache.as_ref().unwrap();
        let good = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        let mut tampered = good.clone();
        tampered.push('A');
        assert!(p.verify(&tampered, &cs).is_err());
        assert_eq!(cache.get(&digest(&tampered), now(), 0).map(|_| ()), None);
        assert!(p.verify(&good, &cs).is_ok());
        let other = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 61}));
        assert!(p.verify(&other, &cs).is_ok());
        // one slot: the newer token took it
        assert_eq!(cache.get(&digest(&good), now(), 0).map(|_| ()), None);
        assert_eq!(cache.get(&digest(&other), now(), 0).map(|_| ()), Some(()));
        // after both, the first still passes (verified again in full)
        assert_eq!(p.verify(&good, &cs).unwrap().name, "alice");
    }

    #[test]
    fn cache_size_zero_turns_the_cache_off_and_a_huge_one_is_refused() {
        let p = policy("cache_size = 0");
        assert!(p.cache.is_none());
        let t = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        assert_eq!(p.verify(&t, &consumers()).unwrap().name, "alice");
        let e = config(&format!(
            "algorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\ncache_size = 100000000"
        ))
        .build(&cx())
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cache_size"));
    }

    #[test]
    fn refuses_expired_immature_unknown_and_tampered_tokens() {
        let p = policy("leeway = \"5s\"");
        let cs = consumers();
        let expired = hs(serde_json::json!({"sub": "alice-sub", "exp": now() - 60}));
        assert_eq!(p.verify(&expired, &cs).unwrap_err(), "token expired");
        let within_leeway = hs(serde_json::json!({"sub": "alice-sub", "exp": now() - 2}));
        assert!(p.verify(&within_leeway, &cs).is_ok());
        let immature =
            hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(p.verify(&immature, &cs).unwrap_err(), "token not yet valid");
        let no_exp = hs(serde_json::json!({"sub": "alice-sub"}));
        assert!(p
            .verify(&no_exp, &cs)
            .unwrap_err()
            .contains("required claim"));
        let stranger = hs(serde_json::json!({"sub": "mallory", "exp": now() + 60}));
        assert_eq!(
            p.verify(&stranger, &cs).unwrap_err(),
            "token subject is not a known consumer"
        );
        let good = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": "alice-sub", "exp": now() + 99999}).to_string());
        parts[1] = &forged;
        assert_eq!(
            p.verify(&parts.join("."), &cs).unwrap_err(),
            "invalid token signature"
        );
        assert_eq!(p.verify("a.b", &cs).unwrap_err(), "malformed token");
        assert_eq!(
            p.verify(&"a".repeat(9000), &cs).unwrap_err(),
            "token too large"
        );
    }

    #[test]
    fn refuses_alg_none_and_crit() {
        let p = policy("");
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let body = enc(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        let none = format!(
            "{}.{body}.",
            enc(serde_json::json!({"alg": "none", "typ": "JWT"}))
        );
        assert_eq!(
            p.verify(&none, &consumers()).unwrap_err(),
            "unsigned tokens are not accepted"
        );
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("JWT".into());
        let crit_head = enc(serde_json::json!({"alg": "HS256", "crit": ["exp"], "exp": 1}));
        let real = hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60}));
        let rest: Vec<&str> = real.split('.').collect();
        let crit = format!("{crit_head}.{}.{}", rest[1], rest[2]);
        assert_eq!(
            p.verify(&crit, &consumers()).unwrap_err(),
            "token uses critical header extensions"
        );
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let p = policy("issuer = \"https://iss\"\naudience = [\"orders\", \"billing\"]");
        let cs = consumers();
        let ok = hs(
            serde_json::json!({"sub": "alice-sub", "exp": now() + 60, "iss": "https://iss", "aud": ["x", "billing"]}),
        );
        assert!(p.verify(&ok, &cs).is_ok());
        let ok1 = hs(
            serde_json::json!({"sub": "alice-sub", "exp": now() + 60, "iss": "https://iss", "aud": "orders"}),
        );
        assert!(p.verify(&ok1, &cs).is_ok());
        let wrong_iss = hs(
            serde_json::json!({"sub": "alice-sub", "exp": now() + 60, "iss": "https://evil", "aud": "orders"}),
        );
        assert_eq!(p.verify(&wrong_iss, &cs).unwrap_err(), "wrong token issuer");
        let wrong_aud = hs(
            serde_json::json!({"sub": "alice-sub", "exp": now() + 60, "iss": "https://iss", "aud": "x"}),
        );
        assert_eq!(
            p.verify(&wrong_aud, &cs).unwrap_err(),
            "wrong token audience"
        );
        let no_aud =
            hs(serde_json::json!({"sub": "alice-sub", "exp": now() + 60, "iss": "https://iss"}));
        assert!(p
            .verify(&no_aud, &cs)
            .unwrap_err()
            .contains("required claim"));
    }

    #[test]
    fn build_errors_for_bad_key_material() {
        let e = config("algorithms = [\"HS256\"]\nsecret = \"short\"")
            .build(&cx())
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("secret"));
        let e = config("algorithms = [\"none\"]\nsecret = \"x\"")
            .build(&cx())
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("algorithms"));
        let e = config(&format!("algorithms = [\"RS256\"]\nsecret = \"{SECRET}\""))
            .build(&cx())
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("secret"));
        let e = config("algorithms = [\"RS256\"]").build(&cx()).unwrap_err();
        assert!(e.message.contains("exactly one"));
        let e = config("algorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent.pem\"")
            .build(&cx())
            .unwrap_err();
        assert!(e.message.contains("cannot read"), "{e}");
        assert!(
            toml::from_str::<JwtAuthConfig>("algorithms = [\"HS256\"]\nsecrt = \"x\"").is_err()
        );
    }

    #[test]
    fn reads_tokens_from_bearer_header_or_cookie() {
        let p = policy("cookie = \"session\"");
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer abc.def.ghi"),
        );
        assert_eq!(p.token(&h), Some("abc.def.ghi"));
        h.insert("authorization", HeaderValue::from_static("Basic xyz"));
        assert_eq!(p.token(&h), None);
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; session=tok.en.x; b=2"),
        );
        assert_eq!(p.token(&h), Some("tok.en.x"));
    }
}
