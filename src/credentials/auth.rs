//! What the runtime is sent for one registry, and how it stays out of logs.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// What the runtime is sent for one registry: the CRI `AuthConfig` fields.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: SecretString,
    pub identity_token: Option<SecretString>,
    pub registry_token: Option<SecretString>,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even the user name stays out: it is half of a credential, and often an account id.
        f.debug_struct("RegistryAuth")
            .field("username", &"[REDACTED]")
            .field("password", &"[REDACTED]")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "registry_token",
                &self.registry_token.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl RegistryAuth {
    /// Every secret string of this credential, to scrub from text that came from elsewhere
    /// (a runtime's error message could echo what it was sent).
    pub fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.password.expose_secret()];
        out.extend(self.identity_token.iter().map(|t| t.expose_secret()));
        out.extend(self.registry_token.iter().map(|t| t.expose_secret()));
        out.retain(|s| s.len() >= 3);
        out
    }
}
