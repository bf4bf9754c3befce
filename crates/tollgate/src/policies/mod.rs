//! The built-in policies. Each uses only the policy API ([`crate::policy`]), as a
//! policy of yours would; their config types are public so their options are
//! documented here.

pub mod acl;
pub mod basic_auth;
pub mod body_limit;
pub mod cache;
pub mod compress;
pub mod concurrency_limit;
pub mod cors;
pub mod ext_authz;
pub mod headers;
pub mod ip_restriction;
pub mod json_body;
pub mod jwt_auth;
pub mod key_auth;
pub mod mtls_auth;
pub mod oauth2_introspection;
pub mod rate_limit;
pub mod validate;
pub mod xml_json;

use crate::policy::Registry;

impl Registry {
    /// A registry with every built-in policy.
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        r.register_builtin::<ip_restriction::IpRestrictionConfig>("ip_restriction");
        r.register_builtin::<cors::CorsConfig>("cors");
        r.register_builtin::<mtls_auth::MtlsAuthConfig>("mtls_auth");
        r.register_builtin::<key_auth::KeyAuthConfig>("key_auth");
        r.register_builtin::<basic_auth::BasicAuthConfig>("basic_auth");
        r.register_builtin::<jwt_auth::JwtAuthConfig>("jwt_auth");
        r.register_builtin::<oauth2_introspection::IntrospectionConfig>("oauth2_introspection");
        r.register_builtin::<acl::AclConfig>("acl");
        r.register_builtin::<ext_authz::ExtAuthzConfig>("ext_authz");
        r.register_builtin::<rate_limit::RateLimitConfig>("rate_limit");
        r.register_builtin::<concurrency_limit::ConcurrencyLimitConfig>("concurrency_limit");
        r.register_builtin::<body_limit::BodyLimitConfig>("body_limit");
        r.register_builtin::<headers::RequestHeadersConfig>("request_headers");
        r.register_builtin::<headers::ResponseHeadersConfig>("response_headers");
        r.register_builtin::<cache::CacheConfig>("cache");
        r.register_builtin::<compress::CompressConfig>("compress");
        r.register_builtin::<json_body::RequestBodyConfig>("request_body");
        r.register_builtin::<json_body::ResponseBodyConfig>("response_body");
        r.register_builtin::<xml_json::XmlJsonConfig>("xml_json");
        r.register_builtin::<validate::ValidateConfig>("validate");
        r
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

/// `true`, for serde defaults of policy flags such as `hide_credentials`.
pub(crate) fn default_true() -> bool {
    true
}
