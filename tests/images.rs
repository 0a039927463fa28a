//! `prepuller images` end to end: the binary reads a rendered chart (on stdin, as from
//! `helm template`), Redis Enterprise resources and a K8ssandra overrides file, all pointing at a
//! local registry; `prepuller check` accepts what it prints and `prepuller pull` pulls it into a
//! real containerd.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testkit::{Sandbox, prepuller_bin, push_image};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");

/// A fixture with its images moved from `registry.example.com` to `registry`.
fn fixture(dir: &Path, name: &str, registry: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text.replace("registry.example.com", registry)).unwrap();
    path
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(prepuller_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn the_list_from_a_chart_rec_and_overrides_is_accepted_by_check_and_pulled() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    let dir = sb.path();
    let chart = std::fs::read_to_string(fixture(dir, "chart.yaml", &reg)).unwrap();
    let rec = fixture(dir, "rec.yaml", &reg);
    let overrides = fixture(dir, "k8ssandra-overrides.yaml", &reg);
    let config = dir.join("images.yaml");

    // `helm template … | prepuller images -f - …`
    let images = run(
        &[
            "images",
            "-f",
            "-",
            "-f",
            rec.to_str().unwrap(),
            "--values",
            overrides.to_str().unwrap(),
            "-o",
            config.to_str().unwrap(),
        ],
        Some(&chart),
    );
    let stderr = text(&images.stderr);
    assert_eq!(images.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("skipped 5 objects of other kinds"),
        "{stderr}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("#   - secret: {namespace: redis, name: regcred}"),
        "{written}"
    );

    // The same text on stdout, piped into `prepuller check -c /dev/stdin`.
    let stdout = run(
        &[
            "images",
            "-f",
            "-",
            "-f",
            rec.to_str().unwrap(),
            "--values",
            overrides.to_str().unwrap(),
        ],
        Some(&chart),
    );
    assert_eq!(stdout.status.code(), Some(0));
    assert_eq!(text(&stdout.stdout), written);
    let check = run(&["check", "-c", "/dev/stdin", "-o", "json"], Some(&written));
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    let mut listed: Vec<(String, String)> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["normalized"].as_str().unwrap().to_string(),
                i["policy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let want = [
        ("bitnami/postgresql:16.3.0-debian-12-r14", "IfNotPresent"),
        ("datastax/cass-config-builder:1.0.4", "IfNotPresent"),
        (
            "k8ssandra/cass-management-api:4.0.1-v0.1.33",
            "IfNotPresent",
        ),
        ("k8ssandra/cass-operator:v1.8.0", "IfNotPresent"),
        ("k8ssandra/medusa:0.11.0", "IfNotPresent"),
        ("k8ssandra/system-logger:6c64f9c4", "IfNotPresent"),
        ("redislabs/k8s-controller:7.22.0-7", "IfNotPresent"),
        ("redislabs/operator:7.22.0-7", "Always"),
        ("redislabs/redis:7.22.0-28", "IfNotPresent"),
        ("shop/exporter:0.15.0", "Always"),
        ("shop/log-agent:1.2.0", "IfNotPresent"),
        ("shop/migrate:2.4.1", "IfNotPresent"),
        ("shop/report:latest", "IfNotPresent"),
        ("shop/web:2.4.1", "IfNotPresent"),
        ("stargateio/stargate-4_0:v1.0.40", "IfNotPresent"),
        ("thelastpickle/cassandra-reaper:3.0.0", "Always"),
    ]
    .map(|(image, policy)| (format!("{reg}/{image}"), policy.to_string()));
    assert_eq!(listed, want);

    for (seed, (image, _)) in want.iter().enumerate() {
        let (repo, tag) = image[reg.len() + 1..].rsplit_once(':').unwrap();
        push_image(&reg, repo, tag, seed as u64 + 1, 64 * 1024).await;
    }
    let pull = run(
        &[
            "pull",
            "-c",
            config.to_str().unwrap(),
            "--runtime-endpoint",
            &sb.containerd.endpoint(),
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(pull.status.code(), Some(0), "{}", text(&pull.stderr));
    let summary: Value = serde_json::from_slice(&pull.stdout).unwrap();
    for row in summary["images"].as_array().unwrap() {
        assert_eq!(row["result"], "pulled", "{row:#}");
    }
    let present = sb.containerd.image_refs();
    for (image, _) in &want {
        assert!(present.contains(image), "{image} not in {present:?}");
    }
}

#[test]
fn bad_input_is_a_usage_error_naming_the_document_and_field_and_no_images_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = fixture(
        dir.path(),
        "k8ssandra-overrides.yaml",
        "registry.example.com",
    );
    // A values file given as manifests.
    let wrong = run(&["images", "-f", overrides.to_str().unwrap()], None);
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = text(&wrong.stderr);
    assert!(
        stderr.contains("k8ssandra-overrides.yaml:3: document 1: field `kind`: missing: not a Kubernetes object (a Helm values file goes with --values)"),
        "{stderr}"
    );
    assert!(wrong.stdout.is_empty());

    let bad = "kind: ConfigMap\n---\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: shop/web:2.4.1\n          imagePullPolicy: Sometimes\n";
    let out = run(&["images", "-f", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stdin:3: document 2 (Deployment shop/web): field `spec.template.spec.containers[0].imagePullPolicy`: unknown pull policy \"Sometimes\""),
        "{stderr}"
    );

    let none = run(&["images", "-f", "-"], Some("kind: ConfigMap\n"));
    assert_eq!(none.status.code(), Some(1));
    let stderr = text(&none.stderr);
    assert!(
        stderr.contains("skipped 1 object of another kind"),
        "{stderr}"
    );
    assert!(stderr.contains("no images found"), "{stderr}");

    let nothing = run(&["images"], None);
    assert_eq!(nothing.status.code(), Some(2));
}
