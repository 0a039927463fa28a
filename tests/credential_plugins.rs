//! The kubelet's credential-provider plugins end to end: `prepuller pull` (the binary) reads a
//! kubelet `CredentialProviderConfig`, runs plugins written here as shell scripts, and pulls
//! from a TLS + htpasswd registry on a real containerd.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use testkit::{Pulled, Sandbox, SecureRegistry, prepuller_bin};

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG: &str = "not-the-Pa55word";
const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

struct Setup {
    sb: Sandbox,
    secure: SecureRegistry,
}

impl Setup {
    async fn start(images: &[&str]) -> Setup {
        let (sb, secure) = SecureRegistry::in_sandbox(images, 300, &[("bot", PASSWORD)]).await;
        Setup { sb, secure }
    }

    fn bin(&self) -> PathBuf {
        self.sb.path().join("plugins")
    }

    /// A plugin script: it keeps its request in `<name>.stdin` and counts its runs in
    /// `<name>.runs`, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        std::fs::create_dir_all(self.bin()).unwrap();
        let path = self.bin().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat > \"$0.stdin\"\necho run >> \"$0.runs\"\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin that answers with `user`/`password` for the registry host.
    fn answering_plugin(&self, name: &str, password: &str, cache: &str) {
        let host = self.secure.host();
        self.plugin(
            name,
            &format!(
                r#"echo '{{"apiVersion":"{V1}","kind":"CredentialProviderResponse",{cache}"auth":{{"{host}":{{"username":"bot","password":"{password}"}}}}}}'"#
            ),
        );
    }

    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.bin().join(format!("{name}.runs")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// `prepuller pull -o json` of `images`, with a kubelet config of the one provider `name`
    /// matching the registry, its `defaultCacheDuration` and the source's `timeout`.
    async fn pull(
        &self,
        name: &str,
        default_cache: &str,
        timeout: &str,
        images: &[String],
    ) -> Pulled {
        let kubelet_config = self.sb.path().join(format!("{name}-kubelet.json"));
        std::fs::write(
            &kubelet_config,
            serde_json::json!({
                "apiVersion": "kubelet.config.k8s.io/v1",
                "kind": "CredentialProviderConfig",
                "providers": [{
                    "name": name,
                    "matchImages": [self.secure.host()],
                    "defaultCacheDuration": default_cache,
                    "apiVersion": V1,
                }],
            })
            .to_string(),
        )
        .unwrap();
        let config = self.sb.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "backoff: {{initial: 1s, max: 2s}}\ncredentials:\n  - kubeletCredentialProviders:\n      config: {}\n      binDir: {}\n      timeout: {timeout}\nimages: [{}]\n",
                kubelet_config.display(),
                self.bin().display(),
                images.join(", ")
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new(prepuller_bin())
            .arg("pull")
            .arg("--config")
            .arg(&config)
            .arg("--runtime-endpoint")
            .arg(self.sb.containerd.endpoint())
            .args(["-o", "json"])
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let p = Pulled {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for text in [&p.stdout, &p.stderr] {
            for secret in [PASSWORD, WRONG] {
                assert!(!text.contains(secret), "a password leaked: {text}");
            }
        }
        p
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.secure.host())
    }
}

#[tokio::test]
async fn registry_scoped_plugin_credentials_pull_and_the_cache_is_honoured() {
    let tags = [
        "team/a:1", "team/a:2", "team/b:1", // Registry
        "team/a:3", "team/a:4", "team/b:2", // Image
        "team/a:5", "team/b:3", // not cached
    ];
    let s = Setup::start(&tags).await;
    let images: Vec<String> = tags.iter().map(|t| s.image(t)).collect();

    // cacheKeyType Registry, for an hour: one run for three images of the registry.
    s.answering_plugin(
        "registry-scoped",
        PASSWORD,
        r#""cacheKeyType":"Registry","cacheDuration":"1h","#,
    );
    let p = s.pull("registry-scoped", "0", "10s", &images[0..3]).await;
    p.assert_pulled(&images[0..3]);
    assert_eq!(s.runs("registry-scoped"), 1, "{}", p.stderr);
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(s.bin().join("registry-scoped.stdin")).unwrap(),
    )
    .unwrap();
    assert_eq!(request["kind"], "CredentialProviderRequest");
    assert_eq!(request["apiVersion"], V1);
    assert!(
        request["image"] == s.image("team/a") || request["image"] == s.image("team/b"),
        "the image's name, without tag, as the kubelet sends it: {request}"
    );

    // cacheKeyType Image, the provider's defaultCacheDuration: once per image name (two
    // tags of team/a share it).
    s.answering_plugin("image-scoped", PASSWORD, r#""cacheKeyType":"Image","#);
    let p = s.pull("image-scoped", "10m", "10s", &images[3..6]).await;
    p.assert_pulled(&images[3..6]);
    assert_eq!(s.runs("image-scoped"), 2);

    // No cacheDuration and defaultCacheDuration 0: every lookup runs the plugin.
    s.answering_plugin("uncached", PASSWORD, r#""cacheKeyType":"Global","#);
    let p = s.pull("uncached", "0", "10s", &images[6..8]).await;
    p.assert_pulled(&images[6..8]);
    assert_eq!(s.runs("uncached"), 2);
}

#[tokio::test]
async fn wrong_hung_and_garbage_plugins_fail_clearly_naming_the_plugin_and_the_image() {
    let s = Setup::start(&["team/app:1"]).await;
    let host = s.secure.host();
    let image = s.image("team/app:1");
    let name = s.image("team/app");
    let images = [image.clone()];

    s.answering_plugin("wrong", WRONG, r#""cacheKeyType":"Registry","#);
    let p = s.pull("wrong", "1h", "10s", &images).await;
    let reason = p.refused(&image);
    assert!(
        reason.contains(&format!(
            "credentials rejected by {host}: tried 1 credential: kubelet credential provider wrong (key {host})"
        )),
        "{reason}"
    );

    s.plugin(
        "hangs",
        "echo 'asking the metadata service' >&2\nexec sleep 600",
    );
    let p = s.pull("hangs", "1h", "1s", &images).await;
    let reason = p.refused(&image);
    assert!(
        reason.contains(&format!(
            "unusable: kubelet credential provider hangs: gave no answer for image {name} within 1s and was killed (kubeletCredentialProviders.timeout); its stderr: asking the metadata service"
        )),
        "{reason}"
    );
    assert_eq!(s.runs("hangs"), 1);

    s.plugin("garbage", &format!("echo 'Password: {PASSWORD}'"));
    let p = s.pull("garbage", "1h", "10s", &images).await;
    let reason = p.refused(&image);
    assert!(
        reason.contains(&format!(
            "unusable: kubelet credential provider garbage: gave no usable answer for image {name}: its output is not a JSON object"
        )),
        "{reason}"
    );
    // Also in the log, as other unreadable sources are.
    assert!(
        p.stderr
            .contains("credential source unusable: kubelet credential provider garbage"),
        "{}",
        p.stderr
    );
}
