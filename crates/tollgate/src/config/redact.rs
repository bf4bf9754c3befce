//! The config as `/admin/config` shows it: the file as JSON, every secret replaced by
//! `"***"`.

/// Keys whose values are secrets, wherever they appear in the config.
const SECRET_KEYS: &[&str] = &["admin_token", "api_keys", "password_hash", "secret"];

/// The config source as JSON with every secret replaced by `"***"`.
pub(crate) fn redacted_config(src: &str) -> serde_json::Value {
    let mut v = toml::from_str::<toml::Table>(src)
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(serde_json::Value::Null);
    redact(&mut v, "");
    v
}

fn redact(v: &mut serde_json::Value, parent: &str) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                // a Redis URL may carry a password
                if SECRET_KEYS.contains(&k.as_str()) || (k == "url" && parent == "redis") {
                    *val = serde_json::Value::String("***".into());
                } else {
                    redact(val, k);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, parent)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_config;

    #[test]
    fn secrets_are_redacted_everywhere() {
        let v = redacted_config(
            "[server]\nadmin_token = \"t0p\"\n[server.redis]\nurl = \"redis://:pw@h:6379\"\n\
             [consumers.a]\napi_keys = [\"k1\", \"k2\"]\nbasic = { username = \"a\", password_hash = \"$argon2id$x\" }\n\
             [routes.r.policies.jwt_auth]\nsecret = \"s3\"\nalgorithms = [\"HS256\"]\n",
        );
        let text = v.to_string();
        for secret in ["t0p", "pw@", "k1", "k2", "$argon2id$x", "s3"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(v["consumers"]["a"]["basic"]["username"], "a");
        assert_eq!(
            v["routes"]["r"]["policies"]["jwt_auth"]["algorithms"][0],
            "HS256"
        );
        assert_eq!(v["server"]["admin_token"], "***");
    }
}
