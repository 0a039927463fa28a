//! Docker config files: `config.json` / `.dockerconfigjson` (`{"auths": …}`) and the legacy
//! `.dockercfg` (the bare map), read as docker and the kubelet read them.

use std::fmt;

use base64::Engine;
use serde::Deserialize;

use super::RegistryAuth;

/// Why a docker config gave no credentials. Never quotes the input: it holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    #[error("not valid JSON (line {line})")]
    NotJson { line: usize },
    #[error("`auths` is not an object")]
    AuthsNotAnObject,
    #[error("not a JSON object")]
    NotAnObject,
    #[error("the entry for {key:?} is not a valid auth entry")]
    InvalidEntry { key: String },
    #[error("the `auth` of {key:?} is not base64 of user:password")]
    InvalidAuth { key: String },
}

/// One `auths` entry as docker writes it. Unknown fields (`email`, …) are ignored, as by docker.
#[derive(Deserialize, Default)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl fmt::Debug for RawEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawEntry([REDACTED])")
    }
}

/// Parses a docker config: `{"auths": {key: entry}}` (config.json, `.dockerconfigjson`) or the
/// legacy bare map (`.dockercfg`). Errors never quote the input.
pub fn parse_docker_config(bytes: &[u8]) -> Result<Vec<(String, RegistryAuth)>, DockerConfigError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| DockerConfigError::NotJson { line: e.line() })?;
    let map = match value {
        serde_json::Value::Object(mut top) => match top.remove("auths") {
            Some(serde_json::Value::Object(auths)) => auths,
            Some(_) => return Err(DockerConfigError::AuthsNotAnObject),
            // A config.json without `auths` (only credsStore, say) has nothing for us.
            None if top.contains_key("credsStore") || top.contains_key("credHelpers") => {
                Default::default()
            }
            None => top,
        },
        _ => return Err(DockerConfigError::NotAnObject),
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Ok(entry) = serde_json::from_value::<RawEntry>(value) else {
            return Err(DockerConfigError::InvalidEntry { key });
        };
        let auth = entry_auth(&key, entry)?;
        out.push((key, auth));
    }
    Ok(out)
}

fn entry_auth(key: &str, e: RawEntry) -> Result<RegistryAuth, DockerConfigError> {
    let (mut username, mut password) = (
        e.username.unwrap_or_default(),
        e.password.unwrap_or_default(),
    );
    // As docker and the kubelet: `auth` wins over username/password.
    if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
        let (u, p) = decode_auth(&auth).ok_or_else(|| DockerConfigError::InvalidAuth {
            key: key.to_string(),
        })?;
        username = u;
        password = p;
    }
    Ok(RegistryAuth {
        username,
        password: password.into(),
        identity_token: e.identitytoken.filter(|t| !t.is_empty()).map(Into::into),
        registry_token: e.registrytoken.filter(|t| !t.is_empty()).map(Into::into),
    })
}

/// `base64(user:password)`, padded or not (the kubelet accepts both).
fn decode_auth(field: &str) -> Option<(String, String)> {
    let field = field.trim();
    let bytes = if field.ends_with('=') {
        base64::engine::general_purpose::STANDARD.decode(field)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(field)
    }
    .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::credentials::testing::b64;

    #[test]
    fn docker_config_forms() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}", "email": "a@b.c"}},
                "padless.example.com": {{"auth": "{}"}},
                "plain.example.com": {{"username": "u", "password": "p"}},
                "both.example.com": {{"auth": "{}", "username": "ignored", "password": "ignored"}},
                "token.example.com": {{"identitytoken": "idt", "registrytoken": "rgt"}}
            }}}}"#,
            b64("hubuser:hub:pass"),
            b64("pad:less").trim_end_matches('='),
            b64("auth-user:auth-pass"),
        );
        let entries: HashMap<String, RegistryAuth> = parse_docker_config(json.as_bytes())
            .unwrap()
            .into_iter()
            .collect();
        let hub = &entries["https://index.docker.io/v1/"];
        assert_eq!(hub.username, "hubuser");
        assert_eq!(
            hub.password.expose_secret(),
            "hub:pass",
            "split at the first colon"
        );
        assert_eq!(entries["padless.example.com"].username, "pad");
        assert_eq!(entries["plain.example.com"].password.expose_secret(), "p");
        assert_eq!(
            entries["both.example.com"].username, "auth-user",
            "auth wins"
        );
        let token = &entries["token.example.com"];
        assert_eq!(
            token.identity_token.as_ref().unwrap().expose_secret(),
            "idt"
        );
        assert_eq!(
            token.registry_token.as_ref().unwrap().expose_secret(),
            "rgt"
        );

        // Legacy .dockercfg: the bare map.
        let legacy = format!(r#"{{"r.example.com": {{"auth": "{}"}}}}"#, b64("old:pw"));
        let entries = parse_docker_config(legacy.as_bytes()).unwrap();
        assert_eq!(entries[0].1.username, "old");
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        let bad = br#"{"auths": {"r.example.com": {"auth": "bm90LWEtcGFpcg=="}}}"#; // "not-a-pair"
        let e = parse_docker_config(bad).unwrap_err().to_string();
        assert!(e.contains("r.example.com") && !e.contains("bm90"), "{e}");
        let e = parse_docker_config(b"{\"auths\": {\"r\": {\"password\": \"hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    /// Each message as it reads in a problem line (`<source>: <message>`).
    #[test]
    fn error_messages() {
        let message = |bytes: &[u8]| parse_docker_config(bytes).unwrap_err().to_string();
        assert_eq!(message(b"{\n,"), "not valid JSON (line 2)");
        assert_eq!(message(br#"{"auths": []}"#), "`auths` is not an object");
        assert_eq!(message(b"[]"), "not a JSON object");
        assert_eq!(
            message(br#"{"r.example.com": 1}"#),
            "the entry for \"r.example.com\" is not a valid auth entry"
        );
        assert_eq!(
            message(br#"{"r.example.com": {"auth": "!"}}"#),
            "the `auth` of \"r.example.com\" is not base64 of user:password"
        );
        assert!(
            parse_docker_config(br#"{"credsStore": "desktop"}"#)
                .unwrap()
                .is_empty()
        );
    }
}
