//! transform.md §3.8: `validate` with JSON Schemas against a real upstream on loopback.

use crate::support::*;

const PET: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name", "price"],
  "properties": {
    "name": {"type": "string", "minLength": 1},
    "price": {"type": "number", "maximum": 100},
    "tags": {"type": "array", "items": {"enum": ["cat", "dog"]}}
  },
  "additionalProperties": false
}"#;

/// A gateway whose route `r` validates POST with the pet schema (a file next to the
/// config, named by an absolute path) and these extra lines in `methods.POST` and the
/// policy table.
fn validating(up: &Upstream, dir: &tempfile::TempDir, policy: &str, post: &str) -> Gateway {
    let pet = dir.path().join("pet.json");
    std::fs::write(&pet, PET).unwrap();
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.validate]\n{policy}\n\
         [routes.r.policies.validate.methods.POST]\nbody_schema = \"{}\"\n{post}\n",
        upstream_table("a", &[up.addr]),
        pet.display()
    ))
}

fn post(gw: &Gateway, path: &str, body: &str) -> reqwest::RequestBuilder {
    client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
}

fn details(a: &Answer) -> Vec<(String, String, String)> {
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    j["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| {
                    (
                        e["location"].as_str().unwrap().to_string(),
                        e["path"].as_str().unwrap().to_string(),
                        e["message"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_request_that_fails_gets_field_level_details_and_never_reaches_the_upstream() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = validating(
        &up,
        &dir,
        "status = 422",
        "query_schema = { type = \"object\", properties = { limit = { type = \"integer\", maximum = 100 } } }\n\
         headers_schema = { type = \"object\", required = [\"x-tenant\"], properties = { x-tenant = { type = \"string\", pattern = \"^t-[0-9]+$\" } } }",
    );
    let body = r#"{"price": 1e400, "tags": ["cat", "s3cret"], "extra": "hunter2"}"#;
    let a = send(post(&gw, "/?limit=200", body).header("x-tenant", "evil")).await;
    assert_eq!(a.status, 422);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["error"], "validation_failed");
    assert_eq!(j["message"], "request does not match the schema");
    let d = details(&a);
    let want = [
        ("query", "/limit", "must be <= 100"),
        (
            "header",
            "/x-tenant",
            "must match the pattern \"^t-[0-9]+$\"",
        ),
        ("body", "/name", "is required"),
        ("body", "/price", "must be <= 100"),
        ("body", "/tags/1", "must be one of [\"cat\",\"dog\"]"),
        ("body", "/extra", "is not allowed"),
    ];
    for w in want {
        assert!(
            d.iter()
                .any(|(l, p, m)| (l.as_str(), p.as_str(), m.as_str()) == w),
            "missing {w:?} in {d:?}"
        );
    }
    let order: Vec<&str> = d.iter().map(|(l, _, _)| l.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|l| {
        ["path", "query", "header", "body"]
            .iter()
            .position(|x| x == l)
    });
    assert_eq!(order, sorted, "location by location");
    let text = String::from_utf8_lossy(&a.body);
    for secret in ["s3cret", "hunter2", "evil", "200"] {
        assert!(
            !text.contains(secret),
            "the refusal echoes {secret}: {text}"
        );
    }
    assert_eq!(up.count(), 0);
    // valid: the upstream gets the body byte for byte
    let ok = "{ \"name\": \"rex\", \"price\": 1.50 }";
    let a = send(post(&gw, "/?limit=10", ok).header("x-tenant", "t-1")).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().unwrap().body, ok.as_bytes());
    // GET has no table: not validated, not counted
    let a = send(client().get(gw.url("/?limit=x"))).await;
    assert_eq!(a.status, 200);
    for (outcome, n) in [("failed", 1.0), ("ok", 1.0)] {
        assert_eq!(
            sample(
                &gw,
                &format!("tollgate_validation_total{{outcome=\"{outcome}\",route=\"r\"}}")
            )
            .await,
            Some(n),
            "{outcome}"
        );
    }
    let log = access_log(&gw, 3).await;
    assert_eq!(log[0]["validation"], "failed");
    assert_eq!(log[1]["validation"], "ok");
    assert_eq!(log[2]["validation"], serde_json::Value::Null);
}

#[tokio::test]
async fn bodies_of_another_type_bad_json_too_large_and_missing_have_their_refusals() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = validating(
        &up,
        &dir,
        "max_body = 100\nmax_details = 1\nverbose = true",
        "",
    );
    let a = send(
        client()
            .post(gw.url("/"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(a.status, 415);
    let a = send(post(
        &gw,
        "/",
        "{\"name\":\"a\",\"name\":\"b\",\"price\":1}",
    ))
    .await;
    assert_eq!(a.status, 400, "duplicate members are not valid JSON");
    let a = send(post(
        &gw,
        "/",
        &format!("{{\"name\":\"{}\"}}", "x".repeat(100)),
    ))
    .await;
    assert_eq!(a.status, 413);
    let a = send(post(&gw, "/", "{\"name\":\"\"}").header("content-encoding", "gzip")).await;
    assert_eq!(
        a.status, 415,
        "an encoded body is another media type (rule 2.7)"
    );
    let a = send(
        client()
            .post(gw.url("/"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        details(&a),
        [(
            "body".to_string(),
            String::new(),
            "a request body is required".to_string()
        )]
    );
    let a = send(post(&gw, "/", "{}")).await;
    assert_eq!(details(&a).len(), 1, "max_details");
    let a = send(
        client()
            .post(gw.url("/?q=%FF"))
            .header("content-type", "application/json")
            .body("{\"name\":\"a\",\"price\":1}"),
    )
    .await;
    assert_eq!(a.status, 200, "the query is not validated on this route");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn enforce_false_lets_failures_through_with_a_warning_line() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = validating(
        &up,
        &dir,
        "enforce = false",
        "query_schema = { type = \"object\", properties = { q = { type = \"string\" } } }",
    );
    let a = send(post(&gw, "/", "{\"price\": \"hunter2\"}")).await;
    assert_eq!(a.status, 200);
    let a = send(
        client()
            .post(gw.url("/?q=%FF"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(a.status, 200, "an undecodable query passes too");
    assert_eq!(up.count(), 2);
    assert_eq!(
        sample(
            &gw,
            "tollgate_validation_total{outcome=\"skipped\",route=\"r\"}"
        )
        .await,
        Some(2.0)
    );
    let warned = eventually(std::time::Duration::from_secs(5), async || {
        gw.stderr_lines()
            .iter()
            .filter(|l| {
                l.contains("validate: route r") && l.contains("body /price: must be of type number")
            })
            .count()
            == 1
    })
    .await;
    assert!(warned);
    assert!(!gw.stderr_lines().iter().any(|l| l.contains("hunter2")));
}

#[tokio::test]
async fn responses_are_watched_never_changed() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.validate.methods.GET]\n\
         response_schema = {{ type = \"object\", required = [\"id\"] }}\n",
        upstream_table("a", &[up.addr])
    ));
    let _ = dir;
    let bad = "/respond?body=%7B%22name%22%3A1%7D&header=etag:%22v%22";
    let a = send(client().get(gw.url(bad))).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"{\"name\":1}"[..]));
    assert_eq!(
        a.header("content-length"),
        Some("10"),
        "not delayed into chunks"
    );
    assert_eq!(a.header("etag"), Some("\"v\""));
    let a = send(client().get(gw.url("/respond?body=%7B%22id%22%3A1%7D"))).await;
    assert_eq!(a.status, 200);
    let a = send(client().get(gw.url("/respond?body=x&header=content-type:text/plain"))).await;
    assert_eq!(a.status, 200);
    let a = send(client().head(gw.url("/respond?body=%7B%7D"))).await;
    assert_eq!(a.status, 200, "a HEAD response has no body to check");
    assert_eq!(
        sample(
            &gw,
            "tollgate_validation_response_failures_total{route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    let log = access_log(&gw, 4).await;
    let watched: Vec<String> = log
        .iter()
        .map(|l| l["validation_response"].to_string())
        .collect();
    assert_eq!(watched, ["\"failed\"", "\"ok\"", "\"not_checked\"", "null"]);
    let warned = eventually(std::time::Duration::from_secs(5), async || {
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("validate: route r") && l.contains("/id: is required"))
    })
    .await;
    assert!(warned);
}

#[tokio::test]
async fn check_reports_every_schema_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.json"),
        "{\n  \"type\": \"object\",\n  \"x\": ,\n}",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("typo.json"),
        r#"{"properties": {"price": {"type": "integr"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("s.yaml"), "type: object").unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.validate]\nstatus = 401\nresponse_schema = {{}}\n\
         [routes.r.policies.validate.methods.POST]\nbody_schema = \"{d}/broken.json\"\nquery_schema = {{ type = \"string\" }}\n\
         headers_schema = {{ type = \"object\", properties = {{ X-Tenant = {{ type = \"string\" }} }} }}\n\
         [routes.r.policies.validate.methods.PUT]\nbody_schema = \"{d}/typo.json\"\nresponse_schema = \"{d}/missing.json\"\n\
         [routes.r.policies.validate.methods.PATCH]\nbody_schema = {{ properties = {{ a = {{ \"$ref\" = \"https://x.example/s.json\", pattern = \"(a)\\\\1\" }} }} }}\n\
         [routes.r.policies.validate.methods.GET]\nquery_schema = \"{d}/s.yaml\"\n\
         [routes.r.policies.validate.methods.DELETE]\n\
         [routes.r.policies.validate.methods.FETCH]\nbody_schema = {{}}\n",
        d = dir.path().display()
    );
    let err = check_fails(&toml);
    for want in [
        "routes.r.policies.validate.status: status 401 is not 400 or 422",
        "routes.r.policies.validate.response_schema: response_schema belongs in a methods.METHOD table",
        "methods.POST.body_schema: ",
        "broken.json:3:8: expected value",
        "methods.POST.query_schema: #/type: the top type of a query or headers schema must be \"object\"",
        "methods.POST.headers_schema: header property \"X-Tenant\" must be lower case",
        "methods.PUT.body_schema: ",
        "typo.json#/properties/price/type: ",
        "methods.PUT.response_schema: cannot read schema file",
        "methods.PATCH.body_schema: #/properties/a/$ref: \"https://x.example/s.json\" is not a local reference",
        "methods.PATCH.body_schema: #/properties/a/pattern: pattern \"(a)\\\\1\" is not allowed",
        "methods.GET.query_schema: schema file",
        "must be a .json file",
        "methods.DELETE: a method table needs at least one of",
        "methods.FETCH: \"FETCH\" is not one of GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE",
    ] {
        assert!(err.contains(want), "missing {want}\nin {err}");
    }
}

const OPENAPI: &str = r##"openapi: 3.0.3
info: {title: pets, version: "1"}
paths:
  /pets:
    parameters:
      - {name: limit, in: query, schema: {type: integer, maximum: 100}}
    post:
      parameters:
        - {name: limit, in: query, schema: {type: integer, maximum: 10}}
        - {name: X-Tenant, in: header, required: true, schema: {type: string}}
        - {name: ids, in: query, explode: false, schema: {type: array, items: {type: integer}}}
        - {name: session, in: cookie, required: true, schema: {type: string}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Pet"}
      responses:
        "201": {description: created}
  /pets/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer}}
      responses:
        "200":
          description: a pet
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Pet"}
  /pets/mine:
    get:
      responses:
        default: {description: mine}
  /files/{name}:
    put:
      parameters:
        - {name: name, in: path, required: true, schema: {type: string, pattern: "^[a-z]+$"}}
      requestBody:
        content:
          application/octet-stream: {}
      responses:
        "204": {description: stored}
components:
  schemas:
    Pet:
      type: object
      required: [name]
      properties:
        name: {type: string, example: rex}
        age: {type: integer, nullable: true}
        price: {type: number, minimum: 0, exclusiveMinimum: true}
"##;

/// A gateway whose route `/api` (prefix stripped) validates against [`OPENAPI`].
fn with_openapi(up: &Upstream, dir: &tempfile::TempDir, extra: &str) -> Gateway {
    let doc = dir.path().join("openapi.yaml");
    std::fs::write(&doc, OPENAPI).unwrap();
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/api\"]\nstrip_prefix = true\nupstream = \"a\"\n\
         [routes.r.policies.validate]\nopenapi = \"{}\"\n{extra}\n",
        upstream_table("a", &[up.addr]),
        doc.display()
    ))
}

#[tokio::test]
async fn an_openapi_operation_checks_path_query_header_and_body() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = with_openapi(&up, &dir, "status = 422");
    let ok = post(
        &gw,
        "/api/pets?limit=5&ids=1,2",
        r#"{"name":"rex","age":null,"price":1}"#,
    )
    .header("x-tenant", "t");
    assert_eq!(send(ok).await.status, 200, "3.0 nullable lets null through");
    assert_eq!(
        up.last().unwrap().target,
        "/pets?limit=5&ids=1,2",
        "forwarded without /api"
    );
    let a = send(post(
        &gw,
        "/api/pets?limit=500&ids=1,x",
        r#"{"age":"old","price":0}"#,
    ))
    .await;
    assert_eq!(a.status, 422);
    let d = details(&a);
    for w in [
        ("query", "/limit", "must be <= 10"),
        ("query", "/ids/1", "must be of type integer"),
        ("header", "/x-tenant", "is required"),
        ("body", "/name", "is required"),
        ("body", "/age", "must be of type null or integer"),
        ("body", "/price", "must be > 0"),
    ] {
        assert!(
            d.iter()
                .any(|(l, p, m)| (l.as_str(), p.as_str(), m.as_str()) == w),
            "missing {w:?} in {d:?}"
        );
    }
    // path parameters are coerced, matched on the normalised path; literals win
    let a = send(client().get(gw.url("/api/pets/abc"))).await;
    assert_eq!(a.status, 422);
    assert_eq!(
        details(&a),
        [(
            "path".into(),
            "/id".into(),
            "must be of type integer".into()
        )]
    );
    assert_eq!(send(client().get(gw.url("/api/pets/7"))).await.status, 200);
    assert_eq!(
        send(client().get(gw.url("/api/pets/mine"))).await.status,
        200
    );
    let a = send(
        client()
            .put(gw.url("/api/files/UP%41"))
            .header("content-type", "application/octet-stream")
            .body("x"),
    )
    .await;
    assert_eq!(
        details(&a),
        [(
            "path".into(),
            "/name".into(),
            "must match the pattern \"^[a-z]+$\"".into()
        )]
    );
    let a = send(
        client()
            .put(gw.url("/api/files/abc"))
            .header("content-type", "application/octet-stream")
            .body("raw"),
    )
    .await;
    assert_eq!(
        a.status, 200,
        "a media type without a schema is accepted unread"
    );
    let a = send(
        client()
            .post(gw.url("/api/pets"))
            .header("x-tenant", "t")
            .header("content-type", "text/csv")
            .body("a,b"),
    )
    .await;
    assert_eq!(a.status, 415);
    let latin1 = client()
        .post(gw.url("/api/pets"))
        .header("x-tenant", "t")
        .header("content-type", "application/json; charset=iso-8859-1")
        .body("{}");
    assert_eq!(
        send(latin1).await.status,
        415,
        "a JSON entry is never skipped by its charset"
    );
    // no operation for DELETE
    let a = send(client().delete(gw.url("/api/pets/7"))).await;
    assert_eq!(a.status, 422);
    assert_eq!(
        details(&a),
        [(
            "path".into(),
            "".into(),
            "no operation matches this method and path".into()
        )]
    );
}

#[tokio::test]
async fn unmatched_pass_and_watched_responses() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = with_openapi(&up, &dir, "unmatched = \"pass\"\nvalidate_responses = true");
    assert_eq!(
        send(client().delete(gw.url("/api/pets/7"))).await.status,
        200
    );
    assert_eq!(
        sample(
            &gw,
            "tollgate_validation_total{outcome=\"unmatched\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    // the echo upstream's JSON has no `name`: the response fails, and goes out unchanged
    let a = send(client().get(gw.url("/api/pets/7"))).await;
    assert_eq!(a.status, 200);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["target"], "/pets/7");
    assert_eq!(
        sample(
            &gw,
            "tollgate_validation_response_failures_total{route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    // a status without an entry is not checked
    let a = send(client().get(gw.url("/api/pets/mine"))).await;
    assert_eq!(a.status, 200);
    let log = access_log(&gw, 3).await;
    assert_eq!(log[0]["validation"], "unmatched");
    assert_eq!(log[1]["validation_response"], "failed");
    assert_eq!(log[2]["validation_response"], "not_checked");
}

#[tokio::test]
async fn check_reports_openapi_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let v2 = write("v2.json", r#"{"swagger": "2.0", "openapi": "2.0"}"#);
    let bad = write(
        "bad.yaml",
        "openapi: 3.1.0\njsonSchemaDialect: https://example.com/dialect\npaths:\n  /files/{name}.json:\n    get: {}\n  /a/{x}:\n    get: {}\n  /a/{y}:\n    get: {}\n  /p:\n    post:\n      parameters:\n        - {name: q, in: query, style: deepObject, schema: {type: object}}\n        - {name: c, in: query, content: {application/json: {}}}\n      requestBody:\n        content:\n          application/json:\n            schema: {type: integr}\n",
    );
    let broken = write("broken.yaml", "openapi: 3.1.0\npaths: [\n");
    let text = write("doc.txt", "{}");
    let route = |n: &str, f: &str| {
        format!("[routes.{n}]\npaths = [\"/{n}\"]\nupstream = \"a\"\n[routes.{n}.policies.validate]\nopenapi = \"{f}\"\n")
    };
    let err = check_fails(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n{}{}{}{}\
         [routes.both]\npaths = [\"/both\"]\nupstream = \"a\"\n[routes.both.policies.validate]\nopenapi = \"{v2}\"\nunmatched = \"maybe\"\n\
         [routes.both.policies.validate.methods.GET]\nquery_schema = {{ type = \"object\" }}\n",
        route("v", &v2),
        route("b", &bad),
        route("k", &broken),
        route("t", &text)
    ));
    for want in [
        "v2.json#/openapi: \"2.0\" is not 3.0.x or 3.1.x",
        "bad.yaml#/jsonSchemaDialect: \"https://example.com/dialect\" is not draft 2020-12",
        "bad.yaml#/paths/~1files~1{name}.json: a path template must be a whole segment",
        "bad.yaml#/paths/~1a~1{y}: \"/a/{y}\" equals another path but for parameter names",
        "bad.yaml#/paths/~1p/post/parameters/0/style: \"deepObject\" is not supported in query",
        "bad.yaml#/paths/~1p/post/parameters/1: a parameter with content instead of schema",
        "bad.yaml#/paths/~1p/post/requestBody/content/application~1json/schema/type: ",
        "broken.yaml:3:1: ",
        "doc.txt\" must be .json, .yaml or .yml",
        "routes.both.policies.validate: validate needs exactly one of methods and openapi",
        "routes.both.policies.validate.unmatched: unknown unmatched \"maybe\" (expected reject or pass)",
    ] {
        assert!(err.contains(want), "missing {want}\nin {err}");
    }
}

#[tokio::test]
async fn terse_refusals_optional_bodies_and_refusal_counts() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = validating(&up, &dir, "verbose = false", "body_required = false");
    let a = send(post(&gw, "/", "{}")).await;
    assert_eq!(a.status, 400);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["error"], "validation_failed");
    assert!(j.get("details").is_none(), "verbose = false: {j}");
    let a = send(
        client()
            .post(gw.url("/"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(
        a.status, 200,
        "body_required = false: an empty body is not validated"
    );
    let a = send(
        client()
            .post(gw.url("/"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(a.status, 415);
    for (reason, n) in [("validation_failed", 1.0), ("unsupported_media_type", 1.0)] {
        assert_eq!(
            sample(
                &gw,
                &format!("tollgate_refusals_total{{reason=\"{reason}\",route=\"r\"}}")
            )
            .await,
            Some(n),
            "{reason}"
        );
    }
}
