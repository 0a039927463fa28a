//! Registry overrides end to end: lists written with public names (as the charts and the Redis
//! Enterprise docs write them) pulled from a private TLS + htpasswd registry through
//! `imageRegistry`, by the binary on a real containerd, with credentials for the private names.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use testkit::{Sandbox, SecureRegistry, dockerconfigjson, prepuller_bin};

const PASSWORD: &str = "s3cret-Pa55word";

struct Setup {
    sb: Sandbox,
    secure: SecureRegistry,
}

/// A sandbox with `images` (repo:tag, their names in the private registry) pushed, served by
/// the TLS + auth registry to `bot`.
async fn setup(images: &[&str]) -> Setup {
    let (sb, secure) = SecureRegistry::in_sandbox(images, 300, &[("bot", PASSWORD)]).await;
    Setup { sb, secure }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }

    /// The row (summary or check) of the image declared as `declared`.
    fn row(&self, declared: &str) -> Value {
        let json = self.json();
        json["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"] == declared)
            .unwrap_or_else(|| panic!("no row for {declared}: {json:#}"))
            .clone()
    }
}

async fn prepuller(s: &Setup, args: &[&str], config: &Path) -> Run {
    let out = tokio::process::Command::new(prepuller_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", s.sb.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn pull(s: &Setup, config: &Path) -> Run {
    let endpoint = s.sb.containerd.endpoint();
    let run = prepuller(
        s,
        &["pull", "--runtime-endpoint", &endpoint, "-o", "json"],
        config,
    )
    .await;
    assert_eq!(run.code, 0, "stdout {}\nstderr {}", run.stdout, run.stderr);
    run
}

/// A config whose credentials are a docker config.json with `key` for `bot`.
fn write_config(s: &Setup, name: &str, key: &str, body: &str) -> PathBuf {
    let dir = s.sb.path();
    let auth = dir.join(format!("{name}-config.json"));
    std::fs::write(&auth, dockerconfigjson(&[(key, "bot", PASSWORD)])).unwrap();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "backoff: {{initial: 1s, max: 2s}}\ncredentials:\n  - dockerConfig: {}\n{body}",
            auth.display()
        ),
    )
    .unwrap();
    config
}

/// Redis Enterprise's private repository: `redislabs/*` pushed under `<registry>/yourproject`,
/// the list kept as Redis publishes it, and the REC's own image form beside it.
#[tokio::test]
async fn a_redis_style_prefix_pulls_public_names_from_the_private_repository() {
    let s = setup(&[
        "yourproject/redislabs/redis:7.2.4-64",
        "yourproject/redislabs/operator:7.2.4-7",
    ])
    .await;
    let host = s.secure.host();
    let prefix = format!("{host}/yourproject");
    // The credentials are scoped to the private repository's path: only the rewritten names
    // match them, so the pull shows they are looked up for the reference pulled.
    let config = write_config(
        &s,
        "redis",
        &prefix,
        &format!(
            "imageRegistry: {prefix}\nimages:\n  - redislabs/redis:7.2.4-64\n  \
             - imagePullPolicy: IfNotPresent\n    repository: {prefix}/redislabs/operator\n    \
             versionTag: 7.2.4-7\n"
        ),
    );

    let check = prepuller(&s, &["check"], &config).await;
    assert_eq!(check.code, 0, "{}", check.stderr);
    let table = check.stdout.clone();
    for text in [
        "DECLARED",
        "PULLED",
        "redislabs/redis:7.2.4-64",
        &format!("{prefix}/redislabs/redis:7.2.4-64 (imageRegistry {prefix})"),
        &format!("{prefix}/redislabs/operator:7.2.4-7"),
    ] {
        assert!(table.contains(text), "{text} missing:\n{table}");
    }
    let check = prepuller(&s, &["check", "-o", "json"], &config).await;
    let redis = check.row("redislabs/redis:7.2.4-64");
    assert_eq!(
        redis["normalized"],
        format!("{prefix}/redislabs/redis:7.2.4-64")
    );
    assert_eq!(redis["imageRegistry"], prefix.as_str());

    let run = pull(&s, &config).await;
    let redis = run.row("redislabs/redis:7.2.4-64");
    assert_eq!(redis["result"], "pulled", "{}", run.stdout);
    assert_eq!(
        redis["normalized"],
        format!("{prefix}/redislabs/redis:7.2.4-64")
    );
    assert_eq!(redis["imageRegistry"], prefix.as_str());
    // The REC form names its registry itself: pulled as declared, no imageRegistry.
    let operator = run.row(&format!("{prefix}/redislabs/operator:7.2.4-7"));
    assert_eq!(operator["result"], "pulled", "{}", run.stdout);
    assert!(operator.get("imageRegistry").is_none(), "{operator}");
    let refs = s.sb.containerd.image_refs();
    assert!(
        refs.contains(&format!("{prefix}/redislabs/redis:7.2.4-64")),
        "{refs:?}"
    );
    assert!(
        !refs.iter().any(|r| r.starts_with("docker.io/")),
        "nothing may come from Docker Hub: {refs:?}"
    );
}

/// Helm's `global.imageRegistry`: the registry of every image replaced, the repository kept
/// as the chart writes it (`nginx`, not `library/nginx`), an entry's own `registry` kept.
#[tokio::test]
async fn a_helm_style_image_registry_pulls_every_image_from_the_private_registry() {
    let s = setup(&["bitnami/redis:7.2.4", "nginx:1.25", "team/tools:1"]).await;
    let host = s.secure.host();
    let config = write_config(
        &s,
        "helm",
        &host,
        &format!(
            "global:\n  imageRegistry: {host}\nimages:\n  - docker.io/bitnami/redis:7.2.4\n  \
             - nginx:1.25\n  - registry: {host}\n    repository: team/tools\n    tag: \"1\"\n"
        ),
    );
    let run = pull(&s, &config).await;
    for (declared, pulled) in [
        (
            "docker.io/bitnami/redis:7.2.4",
            format!("{host}/bitnami/redis:7.2.4"),
        ),
        ("nginx:1.25", format!("{host}/nginx:1.25")),
    ] {
        let row = run.row(declared);
        assert_eq!(row["result"], "pulled", "{}", run.stdout);
        assert_eq!(row["normalized"], pulled);
        assert_eq!(row["imageRegistry"], host.as_str());
    }
    let tools = run.row(&format!("{host}/team/tools:1"));
    assert_eq!(tools["result"], "pulled", "{}", run.stdout);
    assert!(tools.get("imageRegistry").is_none(), "{tools}");
    let refs = s.sb.containerd.image_refs();
    assert!(refs.contains(&format!("{host}/nginx:1.25")), "{refs:?}");
}
