//! Builders shared by the credentials tests.

use base64::Engine;

use super::RegistryAuth;

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `user` with the password `<user>-password`.
pub fn auth(user: &str) -> RegistryAuth {
    RegistryAuth {
        username: user.into(),
        password: format!("{user}-password").into(),
        identity_token: None,
        registry_token: None,
    }
}

/// A `.dockerconfigjson` with one `auth` entry.
pub fn dockerconfigjson(host: &str, user: &str, password: &str) -> Vec<u8> {
    dockerconfigjson_of(&[(host, user, password)]).into_bytes()
}

/// A `.dockerconfigjson` with one `auth` entry per (key, user, password).
pub fn dockerconfigjson_of(entries: &[(&str, &str, &str)]) -> String {
    let auths: Vec<String> = entries
        .iter()
        .map(|(key, user, password)| {
            format!(
                r#""{key}": {{"auth": "{}"}}"#,
                b64(&format!("{user}:{password}"))
            )
        })
        .collect();
    format!(r#"{{"auths": {{{}}}}}"#, auths.join(", "))
}
