//! The kubelet's credential-provider API as prepuller reads it: the `CredentialProviderConfig`
//! file (`kubelet.config.k8s.io`), the request a plugin reads on stdin and the response it writes
//! on stdout (`credentialprovider.kubelet.k8s.io`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use crate::config::ConfigError;
use crate::runtime::RegistryAuth;

const CONFIG_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
/// The request and response have the same shape in every version; the kubelet speaks the one
/// a provider declares and insists the response is in it too.
const PLUGIN_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// One entry of `providers:`, checked as the kubelet checks it.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ProviderSpec {
    #[serde(deserialize_with = "plugin_name")]
    pub name: String,
    #[serde(deserialize_with = "match_images")]
    pub match_images: Vec<String>,
    #[serde(deserialize_with = "go_duration")]
    pub default_cache_duration: Duration,
    #[serde(deserialize_with = "plugin_version")]
    pub api_version: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Service-account token mode (Kubernetes 1.33+): the plugin wants a pod's token.
    #[serde(default, deserialize_with = "present")]
    pub token_attributes: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(deserialize_with = "config_version")]
    #[allow(dead_code)]
    api_version: String,
    #[serde(deserialize_with = "config_kind")]
    #[allow(dead_code)]
    kind: String,
    providers: Vec<ProviderSpec>,
}

/// Parses a `CredentialProviderConfig` (YAML or JSON); errors name `file:line:column` and the
/// field.
pub(super) fn parse_config(text: &str, source: &Path) -> Result<Vec<ProviderSpec>, ConfigError> {
    let mut field = None;
    let raw: RawConfig = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path != "." {
                field = Some(path);
            }
            e.into_inner()
        })
    })
    .map_err(|e| ConfigError::yaml(e, field, source))?;
    for (i, p) in raw.providers.iter().enumerate() {
        if raw.providers[..i].iter().any(|q| q.name == p.name) {
            return Err(ConfigError::setting(
                source,
                Some(&format!("providers[{i}].name")),
                format!("duplicate provider name {:?}", p.name),
            ));
        }
    }
    Ok(raw.providers)
}

fn config_version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &CONFIG_VERSIONS, "a CredentialProviderConfig apiVersion")
}

fn plugin_version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &PLUGIN_VERSIONS, "a credential provider apiVersion")
}

fn one_of<'de, D: Deserializer<'de>>(
    d: D,
    allowed: &[&str],
    what: &str,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(de::Error::custom(format!(
            "{s:?} is not {what}; expected one of {}",
            allowed.join(", ")
        )))
    }
}

fn config_kind<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s == "CredentialProviderConfig" {
        Ok(s)
    } else {
        Err(de::Error::custom(format!(
            "kind {s:?} is not CredentialProviderConfig"
        )))
    }
}

/// The plugin's file name in the bin dir: a name, never a path (as the kubelet requires).
fn plugin_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', ' ']) {
        return Err(de::Error::custom(format!(
            "{s:?} is not a plugin file name (no path, no spaces, not . or ..)"
        )));
    }
    Ok(s)
}

fn match_images<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom(
            "matchImages is empty: the plugin would never run",
        ));
    }
    if let Some(bad) = v.iter().find(|m| m.trim().is_empty()) {
        return Err(de::Error::custom(format!(
            "{bad:?} is not an image pattern"
        )));
    }
    Ok(v)
}

fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_go_duration(&s).map_err(de::Error::custom)
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A Go `time.Duration` string, as `metav1.Duration` writes it: `12h`, `1h30m`, `1.5s`,
/// `500ms`, `0`. Negative durations are refused.
pub(super) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why} (write e.g. 12h, 30m or 0)");
    let mut rest = s.trim();
    if rest.starts_with('-') {
        return Err(bad("negative"));
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| bad("a number was expected"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("a unit is missing")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        seconds += number * scale;
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad("out of range"))
}

/// The request a plugin reads on stdin, in the version its provider declares.
pub(super) fn request(api_version: &str, image: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": api_version,
        "kind": "CredentialProviderRequest",
        "image": image,
    }))
    .expect("a JSON object of strings serializes")
}

/// How far a response's credentials reach: the key the kubelet caches them under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A plugin's answer. No Debug: it holds passwords.
pub(super) struct Response {
    pub cache_key_type: CacheKeyType,
    /// `None`: the provider's `defaultCacheDuration`; zero: not cached.
    pub cache_duration: Option<Duration>,
    /// `(matchImage key, credential)`, matched against the image as docker config keys are.
    pub auth: Vec<(String, RegistryAuth)>,
}

/// Why a plugin's stdout is not a usable response. Never quotes the output: it may hold a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("its output is not a JSON object (at line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("its apiVersion is {got:?}, not {expected} as its provider declares")]
    WrongVersion { expected: String, got: String },
    #[error("its kind is {0:?}, not CredentialProviderResponse")]
    WrongKind(String),
    #[error("it is not a valid CredentialProviderResponse: {0}")]
    Invalid(String),
    #[error("its cacheKeyType {0:?} is not Image, Registry or Global")]
    CacheKeyType(String),
    #[error("its cacheDuration is not a duration such as 6h or 0")]
    CacheDuration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResponse {
    #[serde(default)]
    cache_key_type: String,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: Option<BTreeMap<String, RawAuth>>,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Parses a plugin's stdout as the kubelet does: the apiVersion must be the provider's, the
/// kind `CredentialProviderResponse`, the cacheKeyType one of the three.
pub(super) fn parse_response(stdout: &[u8], api_version: &str) -> Result<Response, ResponseError> {
    let not_json = |e: serde_json::Error| ResponseError::NotJson {
        line: e.line(),
        column: e.column(),
    };
    let header: Header = serde_json::from_slice(stdout).map_err(not_json)?;
    if header.api_version != api_version {
        let mut got = header.api_version;
        got.truncate(100);
        return Err(ResponseError::WrongVersion {
            expected: api_version.to_string(),
            got,
        });
    }
    if header.kind != "CredentialProviderResponse" {
        let mut got = header.kind;
        got.truncate(100);
        return Err(ResponseError::WrongKind(got));
    }
    // serde_json's message can quote a value (a password of the wrong type): position only.
    let raw: RawResponse = serde_json::from_slice(stdout).map_err(|e| {
        ResponseError::Invalid(format!(
            "a field has the wrong type (at line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let cache_key_type = match raw.cache_key_type.as_str() {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => {
            let mut other = other.to_string();
            other.truncate(100);
            return Err(ResponseError::CacheKeyType(other));
        }
    };
    let cache_duration = raw
        .cache_duration
        .map(|d| parse_go_duration(&d).map_err(|_| ResponseError::CacheDuration))
        .transpose()?;
    let auth = raw
        .auth
        .unwrap_or_default()
        .into_iter()
        .map(|(key, a)| {
            (
                key,
                RegistryAuth {
                    username: a.username,
                    password: a.password.into(),
                    identity_token: None,
                    registry_token: None,
                },
            )
        })
        .collect();
    Ok(Response {
        cache_key_type,
        cache_duration,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    #[test]
    fn go_durations() {
        for (s, secs) in [
            ("0", 0.0),
            ("0s", 0.0),
            ("12h", 43200.0),
            ("1h30m", 5400.0),
            ("1.5s", 1.5),
            ("500ms", 0.5),
            ("2m3s", 123.0),
        ] {
            assert_eq!(
                parse_go_duration(s),
                Ok(Duration::from_secs_f64(secs)),
                "{s}"
            );
        }
        for s in ["", "-1h", "12", "1d", "h", "1h x"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
    }

    /// The file EKS nodes ship, verbatim in form (JSON).
    #[test]
    fn the_eks_config_in_json() {
        let text = r#"{
  "apiVersion": "kubelet.config.k8s.io/v1",
  "kind": "CredentialProviderConfig",
  "providers": [
    {
      "name": "ecr-credential-provider",
      "matchImages": [
        "*.dkr.ecr.*.amazonaws.com",
        "*.dkr.ecr.*.amazonaws.com.cn"
      ],
      "defaultCacheDuration": "12h",
      "apiVersion": "credentialprovider.kubelet.k8s.io/v1"
    }
  ]
}"#;
        let p = parse_config(text, Path::new("config.json")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "ecr-credential-provider");
        assert_eq!(p[0].match_images.len(), 2);
        assert_eq!(p[0].default_cache_duration, Duration::from_secs(12 * 3600));
        assert!(p[0].args.is_empty() && !p[0].token_attributes);
    }

    #[test]
    fn yaml_config_with_args_env_and_errors_that_point_at_the_field() {
        let text = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: CredentialProviderConfig\nproviders:\n  - name: acr-credential-provider\n    matchImages: [\"*.azurecr.io\"]\n    defaultCacheDuration: 10m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1beta1\n    args: [/etc/kubernetes/azure.json]\n    env:\n      - {name: A, value: b}\n";
        let p = parse_config(text, Path::new("c.yaml")).unwrap();
        assert_eq!(p[0].args, ["/etc/kubernetes/azure.json"]);
        assert_eq!(
            (p[0].env[0].name.as_str(), p[0].env[0].value.as_str()),
            ("A", "b")
        );

        let cases = [
            (
                text.replace("10m", "ten minutes"),
                "c.yaml:6:27: field `providers[0].defaultCacheDuration`: invalid duration",
            ),
            (
                text.replace("name: acr", "name: ../acr"),
                "c.yaml:4:11: field `providers[0].name`",
            ),
            (
                text.replace("kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v2"),
                "c.yaml:1:13: field `apiVersion`",
            ),
            (
                text.replace("    defaultCacheDuration: 10m\n", ""),
                "missing field `defaultCacheDuration`",
            ),
            (
                text.replace("[\"*.azurecr.io\"]", "[]"),
                "field `providers[0].matchImages`: matchImages is empty",
            ),
        ];
        for (text, want) in cases {
            let e = parse_config(&text, Path::new("c.yaml")).err().unwrap();
            assert!(e.headline().contains(want), "{}\nwant {want}", e.headline());
        }
        let twice = format!(
            "{text}  - name: acr-credential-provider\n    matchImages: [\"x.io\"]\n    defaultCacheDuration: 0s\n    apiVersion: {V1}\n"
        );
        let e = parse_config(&twice, Path::new("c.yaml")).err().unwrap();
        assert!(
            e.headline().contains("duplicate provider name"),
            "{}",
            e.headline()
        );
    }

    #[test]
    fn responses_v1_and_v1beta1() {
        for version in [V1, "credentialprovider.kubelet.k8s.io/v1beta1"] {
            let out = format!(
                r#"{{"apiVersion":"{version}","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"6h","auth":{{"*.dkr.ecr.us-east-1.amazonaws.com":{{"username":"AWS","password":"pw-123"}}}}}}"#
            );
            let r = parse_response(out.as_bytes(), version).unwrap();
            assert_eq!(r.cache_key_type, CacheKeyType::Registry);
            assert_eq!(r.cache_duration, Some(Duration::from_secs(6 * 3600)));
            assert_eq!(r.auth[0].0, "*.dkr.ecr.us-east-1.amazonaws.com");
            assert_eq!(r.auth[0].1.username, "AWS");
            assert_eq!(r.auth[0].1.password.expose_secret(), "pw-123");
        }
        let r = parse_response(
            format!(r#"{{"apiVersion":"{V1}","kind":"CredentialProviderResponse","cacheKeyType":"Global"}}"#).as_bytes(),
            V1,
        )
        .unwrap();
        assert_eq!(
            (r.cache_key_type, r.cache_duration, r.auth.len()),
            (CacheKeyType::Global, None, 0)
        );
    }

    #[test]
    fn bad_responses_say_why_and_never_quote_a_password() {
        let cases: [(&str, &str); 6] = [
            (
                "hello: I am not JSON",
                "not a JSON object (at line 1, column 1)",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image"}"#,
                "apiVersion is \"credentialprovider.kubelet.k8s.io/v1beta1\", not credentialprovider.kubelet.k8s.io/v1",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other"}"#,
                "kind is \"Other\"",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Node"}"#,
                "cacheKeyType \"Node\"",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r":{"username":"u","password":["pw-123"]}}}"#,
                "wrong type",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"pw-123"}"#,
                "cacheDuration",
            ),
        ];
        for (out, want) in cases {
            let e = parse_response(out.as_bytes(), V1)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want), "{e}\nwant {want}");
            assert!(!e.contains("pw-123"), "{e}");
        }
    }
}
