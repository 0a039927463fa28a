//! Credentials end to end: `prepuller pull` against a registry with TLS (a CA made by the test,
//! trusted by containerd through certs.d) and htpasswd basic auth, on a real containerd.

use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use testkit::{Pulled, Sandbox, SecureRegistry, dockerconfigjson, prepuller_bin};

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG: &str = "not-the-Pa55word";

struct Setup {
    sb: Sandbox,
    secure: SecureRegistry,
}

/// A sandbox, `images` (repo:tag) pushed, and the TLS + auth registry serving them to `bot`.
async fn setup(images: &[&str]) -> Setup {
    let (sb, secure) = SecureRegistry::in_sandbox(images, 100, &[("bot", PASSWORD)]).await;
    Setup { sb, secure }
}

/// `prepuller pull -o json` of `image` with `credentials` (YAML list items) in its config.
async fn pull(
    s: &Setup,
    name: &str,
    image: &str,
    credentials: &str,
    env: &[(&str, &str)],
) -> Pulled {
    let config = s.sb.path().join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "backoff: {{initial: 1s, max: 2s}}\ncredentials:\n{credentials}\nimages: [{image}]\n"
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(prepuller_bin())
        .arg("pull")
        .arg("--config")
        .arg(&config)
        .arg("--runtime-endpoint")
        .arg(s.sb.containerd.endpoint())
        .args(["-o", "json"])
        .envs(env.iter().copied())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Pulled {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_secret(text: &str) {
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "a password leaked: {text}");
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("bot:{PASSWORD}"));
    assert!(!text.contains(&encoded), "an auth string leaked: {text}");
}

/// A mounted `kubernetes.io/dockerconfigjson` secret, laid out as the kubelet does.
fn mount_secret(dir: &Path, name: &str, key: &str, content: &str) {
    let data = dir.join(name).join("..2026_11_23_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(key), content).unwrap();
    std::os::unix::fs::symlink(
        "..2026_11_23_00_00_00.000000001",
        dir.join(name).join("..data"),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(name).join(key)).unwrap();
}

#[tokio::test]
async fn every_file_source_pulls_from_an_authenticated_tls_registry() {
    let s = setup(&["team/a:1", "team/b:1", "team/c:1", "team/d:1"]).await;
    let host = s.secure.host();
    let dir = s.sb.path();

    // dockerConfig: a docker config.json with a scheme and /v1/ in the key, as `docker login` writes.
    let file = dir.join("config.json");
    std::fs::write(
        &file,
        dockerconfigjson(&[(&format!("https://{host}/v1/"), "bot", PASSWORD)]),
    )
    .unwrap();
    let a = format!("{host}/team/a:1");
    let p = pull(
        &s,
        "file",
        &a,
        &format!("  - dockerConfig: {}", file.display()),
        &[],
    )
    .await;
    p.assert_pulled(&[&a]);

    // dockerConfigDir: mounted pull secrets, both the dockerconfigjson and the legacy dockercfg form.
    let secrets = dir.join("pull-secrets");
    mount_secret(
        &secrets,
        "regcred",
        ".dockerconfigjson",
        &dockerconfigjson(&[(&format!("{host}/team/b"), "bot", PASSWORD)]),
    );
    let legacy_auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{PASSWORD}"));
    mount_secret(
        &secrets,
        "legacy",
        ".dockercfg",
        &format!("{{\"{host}/team/c\": {{\"auth\": \"{legacy_auth}\"}}}}"),
    );
    let source = format!("  - dockerConfigDir: {}", secrets.display());
    for image in [format!("{host}/team/b:1"), format!("{host}/team/c:1")] {
        let p = pull(&s, "dir", &image, &source, &[]).await;
        p.assert_pulled(&[&image]);
    }

    // nodeDefaults: the kubelet's <root-dir>/config.json.
    let kubelet = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    std::fs::write(
        kubelet.join("config.json"),
        dockerconfigjson(&[(&host, "bot", PASSWORD)]),
    )
    .unwrap();
    let d = format!("{host}/team/d:1");
    let p = pull(
        &s,
        "node",
        &d,
        &format!(
            "  - nodeDefaults: true\n    kubeletRootDir: {}",
            kubelet.display()
        ),
        &[],
    )
    .await;
    p.assert_pulled(&[&d]);
    assert_no_secret(&s.secure.log());
}

#[tokio::test]
async fn no_or_wrong_credentials_fail_permanently_and_say_which_were_tried() {
    let s = setup(&["team/app:1"]).await;
    let host = s.secure.host();
    let image = format!("{host}/team/app:1");

    let other = s.sb.path().join("other.json");
    std::fs::write(
        &other,
        dockerconfigjson(&[("elsewhere.example.com", "bot", PASSWORD)]),
    )
    .unwrap();
    let p = pull(
        &s,
        "none",
        &image,
        &format!("  - dockerConfig: {}", other.display()),
        &[],
    )
    .await;
    assert_eq!(p.code, 1, "{}", p.stderr);
    let row = p.row(&image);
    assert_eq!(row["errorClass"], "permanent", "{row:#}");
    assert_eq!(row["attempts"], 1, "refusals are not retried: {row:#}");
    let error = row["reason"].as_str().unwrap().to_string();
    assert!(error.contains("the registry refused access"), "{error}");
    assert!(
        error.contains(&format!("no credentials matched {host}")),
        "{error}"
    );
    assert!(
        error.contains(&format!("searched dockerConfig {}", other.display())),
        "{error}"
    );

    let wrong = s.sb.path().join("wrong.json");
    std::fs::write(&wrong, dockerconfigjson(&[(&host, "bot", WRONG)])).unwrap();
    let p = pull(
        &s,
        "wrong",
        &image,
        &format!("  - dockerConfig: {}", wrong.display()),
        &[],
    )
    .await;
    assert_eq!(p.code, 1, "{}", p.stderr);
    let row = p.row(&image);
    assert_eq!(row["errorClass"], "permanent", "{row:#}");
    assert_eq!(row["attempts"], 1, "{row:#}");
    let error = row["reason"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!(
            "credentials rejected by {host}: tried 1 credential: dockerConfig {} (key {host})",
            wrong.display()
        )),
        "{error}"
    );
    assert_no_secret(&p.stdout);
    assert_no_secret(&p.stderr);
}

#[tokio::test]
async fn two_matching_keys_are_tried_most_specific_first_and_the_second_works() {
    let s = setup(&["team/app:1"]).await;
    let host = s.secure.host();
    let image = format!("{host}/team/app:1");
    let file = s.sb.path().join("config.json");
    std::fs::write(
        &file,
        dockerconfigjson(&[
            (&host, "bot", PASSWORD),
            (&format!("{host}/team"), "bot", WRONG),
        ]),
    )
    .unwrap();
    let p = pull(
        &s,
        "two",
        &image,
        &format!("  - dockerConfig: {}", file.display()),
        &[("PREPULLER_LOG", "info")],
    )
    .await;
    p.assert_pulled(&[&image]);
    assert!(
        p.stderr
            .contains("pulled with a later credential after 1 refused"),
        "{}",
        p.stderr
    );
    assert!(p.stderr.contains(&format!("(key {host})")), "{}", p.stderr);
    assert_no_secret(&p.stderr);
}

/// A `secret:` source read through the Kubernetes API: a stand-in API server that answers the
/// one GET the agent needs, found through a kubeconfig.
#[tokio::test]
async fn a_secret_read_by_name_through_the_api() {
    let s = setup(&["team/app:1"]).await;
    let host = s.secure.host();
    let image = format!("{host}/team/app:1");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": "redis"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(dockerconfigjson(&[(&host, "bot", PASSWORD)]))},
    });
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        let secret = secret.clone();
        async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            seen.lock().unwrap().push(line.clone());
            if line == "GET /api/v1/namespaces/redis/secrets/regcred" {
                (axum::http::StatusCode::OK, axum::Json(secret))
            } else {
                (axum::http::StatusCode::FORBIDDEN, axum::Json(serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403})))
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let kubeconfig = s.sb.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n"),
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let p = pull(
        &s,
        "secret",
        &image,
        "  - secret: {namespace: redis, name: regcred}",
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;
    p.assert_pulled(&[&image]);
    assert_eq!(
        *requests.lock().unwrap(),
        ["GET /api/v1/namespaces/redis/secrets/regcred"],
        "one GET by name, no list or watch"
    );
    assert_no_secret(&p.stderr);
    server.abort();
}
