//! Which responses are stored and for how long (`cache.md` §3.3, §3.4).

use std::time::{Duration, SystemTime};

use http::header;
use pingora::http::ResponseHeader;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::CacheMeta;

use super::CacheRules;

/// Why a response was not stored (`tollgate_cache_not_stored_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    TooLarge,
    NoFreshness,
}

impl NotStored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::NoStore => "no_store",
            Self::Private => "private",
            Self::SetCookie => "set_cookie",
            Self::VaryStar => "vary_star",
            Self::TooLarge => "too_large",
            Self::NoFreshness => "no_freshness",
        }
    }
}

/// The entry for `resp` received at `now`, or why there is none. The entry's head is
/// the response's minus what must not be stored (`Set-Cookie` with
/// `strip_set_cookie`, the fields `private="…"` and `no-cache="…"` name).
pub(crate) fn entry(
    rules: &CacheRules,
    resp: &ResponseHeader,
    max_object: u64,
    now: SystemTime,
) -> Result<CacheMeta, NotStored> {
    if !rules.statuses.contains(&resp.status.as_u16()) {
        return Err(NotStored::Status);
    }
    let cc = CacheControl::from_resp_headers(resp);
    let mut drop_fields: Vec<String> = Vec::new();
    if let Some(cc) = &cc {
        if cc.no_store() {
            return Err(NotStored::NoStore);
        }
        match cc.private_field_names() {
            Some(names) => drop_fields.extend(field_names(names)),
            None if cc.private() => return Err(NotStored::Private),
            None => {}
        }
        if let Some(names) = cc.no_cache_field_names() {
            drop_fields.extend(field_names(names));
        }
    }
    if resp.headers.contains_key(header::SET_COOKIE) && !rules.strip_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if crate::forwarding::list_tokens(&resp.headers, &header::VARY).any(|n| n == "*") {
        return Err(NotStored::VaryStar);
    }
    let declared = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_object) {
        return Err(NotStored::TooLarge);
    }
    let respect = rules.respect_cache_control;
    let own = if respect {
        own_lifetime(cc.as_ref(), resp, now)
    } else {
        None
    };
    let configured = rules
        .status_ttl
        .get(&resp.status.as_u16())
        .copied()
        .unwrap_or(rules.ttl);
    let mut lifetime = match own {
        Some(secs) => secs,
        None if configured == 0 => return Err(NotStored::NoFreshness),
        None => configured,
    };
    // bare `no-cache`: stored, but every use is revalidated
    if respect
        && cc
            .as_ref()
            .is_some_and(|c| c.no_cache() && c.no_cache_field_names().is_none())
    {
        lifetime = 0;
    }
    if let Some(cap) = rules.max_ttl {
        lifetime = lifetime.min(cap);
    }
    let no_stale = cc
        .as_ref()
        .is_some_and(|c| c.must_revalidate() || c.proxy_revalidate() || c.has_key("s-maxage"));
    let (swr, sie) = if no_stale {
        (0, 0)
    } else {
        let own = |d: Result<Option<u32>, _>| if respect { d.ok().flatten() } else { None };
        (
            cc.as_ref()
                .and_then(|c| own(c.stale_while_revalidate()))
                .unwrap_or(rules.stale_while_revalidate),
            cc.as_ref()
                .and_then(|c| own(c.stale_if_error()))
                .unwrap_or(rules.stale_if_error),
        )
    };
    let mut head = resp.clone();
    if rules.strip_set_cookie {
        head.remove_header(&header::SET_COOKIE);
    }
    for f in &drop_fields {
        head.remove_header(f.as_str());
    }
    let fresh_until = now + Duration::from_secs(u64::from(lifetime));
    Ok(CacheMeta::new(fresh_until, now, swr, sie, head))
}

fn field_names(names: pingora_cache::cache_control::ListValueIter<'_>) -> Vec<String> {
    names
        .filter_map(|n| std::str::from_utf8(n).ok())
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The response's own lifetime in seconds: `s-maxage`, `max-age`, then `Expires`
/// (a past or invalid date: 0).
fn own_lifetime(cc: Option<&CacheControl>, resp: &ResponseHeader, now: SystemTime) -> Option<u32> {
    if let Some(cc) = cc {
        if let Ok(Some(s)) = cc.s_maxage() {
            return Some(s);
        }
        if let Ok(Some(s)) = cc.max_age() {
            return Some(s);
        }
        if cc.has_key("s-maxage") || cc.has_key("max-age") {
            // present but invalid: stale at once
            return Some(0);
        }
    }
    let expires = resp.headers.get(header::EXPIRES)?;
    let at = expires
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok());
    Some(match at {
        Some(t) => t
            .duration_since(now)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn life(rules: &CacheRules, r: &ResponseHeader) -> Result<u64, NotStored> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        entry(rules, r, 1 << 20, now)
            .map(|m| m.fresh_until().duration_since(now).unwrap().as_secs())
    }

    #[test]
    fn lifetime_comes_from_s_maxage_max_age_expires_status_ttl_then_ttl() {
        let mut rules = CacheRules::default();
        rules.status_ttl.insert(404, 30);
        let cc = |v| resp(200, &[("cache-control", v)]);
        assert_eq!(life(&rules, &cc("max-age=10, s-maxage=20")), Ok(20));
        assert_eq!(life(&rules, &cc("max-age=10")), Ok(10));
        assert_eq!(life(&rules, &resp(200, &[])), Ok(300));
        assert_eq!(life(&rules, &resp(404, &[])), Ok(30));
        let expires = resp(200, &[("expires", "Sun, 09 Sep 2001 01:47:00 GMT")]);
        assert_eq!(life(&rules, &expires), Ok(20));
        let past = resp(200, &[("expires", "Sun, 09 Sep 2001 01:00:00 GMT")]);
        assert_eq!(life(&rules, &past), Ok(0));
        assert_eq!(life(&rules, &resp(200, &[("expires", "soon")])), Ok(0));
        assert_eq!(life(&rules, &cc("no-cache")), Ok(0));
        rules.respect_cache_control = false;
        assert_eq!(life(&rules, &cc("max-age=10")), Ok(300));
        rules.max_ttl = Some(60);
        assert_eq!(life(&rules, &resp(200, &[])), Ok(60));
        rules.ttl = 0;
        assert_eq!(life(&rules, &resp(200, &[])), Err(NotStored::NoFreshness));
    }

    #[test]
    fn unstorable_responses_say_why() {
        let rules = CacheRules::default();
        assert_eq!(life(&rules, &resp(500, &[])), Err(NotStored::Status));
        let r = |h, v| resp(200, &[(h, v)]);
        assert_eq!(
            life(&rules, &r("cache-control", "no-store")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            life(&rules, &r("cache-control", "private")),
            Err(NotStored::Private)
        );
        assert_eq!(
            life(&rules, &r("set-cookie", "a=1")),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            life(&rules, &r("vary", "accept, *")),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            life(&rules, &r("content-length", "2000000")),
            Err(NotStored::TooLarge)
        );
    }

    #[test]
    fn named_private_and_no_cache_fields_and_stripped_cookies_never_reach_the_entry() {
        let rules = CacheRules {
            strip_set_cookie: true,
            ..CacheRules::default()
        };
        let r = resp(
            200,
            &[
                (
                    "cache-control",
                    "private=\"X-Secret\", no-cache=\"X-Other\", max-age=5",
                ),
                ("x-secret", "s"),
                ("x-other", "o"),
                ("set-cookie", "a=1"),
                ("x-kept", "k"),
            ],
        );
        let m = entry(&rules, &r, 1 << 20, SystemTime::now()).unwrap();
        let h = &m.response_header().headers;
        assert!(h.get("x-secret").is_none() && h.get("x-other").is_none());
        assert!(h.get("set-cookie").is_none());
        assert_eq!(h.get("x-kept").unwrap(), "k");
        assert_eq!(m.fresh_sec(), 5);
    }

    #[test]
    fn stale_windows_come_from_the_response_unless_it_forbids_stale() {
        let rules = CacheRules {
            stale_while_revalidate: 7,
            stale_if_error: 8,
            ..CacheRules::default()
        };
        let m = |v| {
            entry(
                &rules,
                &resp(200, &[("cache-control", v)]),
                1 << 20,
                SystemTime::now(),
            )
            .unwrap()
        };
        let own = m("max-age=1, stale-while-revalidate=3, stale-if-error=4");
        assert_eq!(
            (own.stale_while_revalidate_sec(), own.stale_if_error_sec()),
            (3, 4)
        );
        let policy = m("max-age=1");
        assert_eq!(
            (
                policy.stale_while_revalidate_sec(),
                policy.stale_if_error_sec()
            ),
            (7, 8)
        );
        let strict = m("max-age=1, must-revalidate");
        assert_eq!(
            (
                strict.stale_while_revalidate_sec(),
                strict.stale_if_error_sec()
            ),
            (0, 0)
        );
    }
}
