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

const CHARTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/charts");

/// Renders a fixture chart with Helm's own engine (`hack/render-charts.py`: helm-python-sdk, the
/// Helm v4 Go library, in the project's .venv), as `helm template -f VALUES…` does. Without it
/// the test fails: `make setup` installs it.
fn helm_template(chart: &Path, values: &[PathBuf]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (it installs helm-python-sdk from hack/requirements-deploy.txt)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("hack/render-charts.py"))
        .arg(chart)
        .args(values)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rendering {} with Helm failed (is helm-python-sdk installed? `make setup`): {}",
        chart.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The images of a printed config, as written, sorted.
fn images_of(config: &str) -> Vec<String> {
    let v: Value = serde_saphyr::from_str(config).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let mut images: Vec<String> = v["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in\n{config}"))
        .iter()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            _ => i["image"].as_str().unwrap().to_string(),
        })
        .collect();
    images.sort();
    images
}

/// `prepuller images` with these arguments: (images, stdout, stderr); it must succeed.
fn images(args: &[&str]) -> (Vec<String>, String, String) {
    let mut all = vec!["images"];
    all.extend(args);
    let out = run(&all, None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all:?}: {stderr}");
    (images_of(&stdout), stdout, stderr)
}

/// `prepuller images -f FILE`.
fn images_from_manifests(file: &Path) -> (Vec<String>, String, String) {
    images(&["-f", file.to_str().unwrap()])
}

/// `prepuller images --values A --values B … FLAGS`.
fn images_from_values(files: &[PathBuf], flags: &[&str]) -> (Vec<String>, String, String) {
    let mut args: Vec<&str> = flags.to_vec();
    for f in files {
        args.extend(["--values", f.to_str().unwrap()]);
    }
    images(&args)
}

#[test]
fn every_fixture_chart_gives_from_its_values_the_images_helm_renders() {
    let dir = tempfile::tempdir().unwrap();
    let mut charts: Vec<PathBuf> = std::fs::read_dir(CHARTS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Chart.yaml").exists())
        .collect();
    charts.sort();
    assert!(charts.len() >= 7, "{charts:?}");
    for chart in &charts {
        let name = chart.file_name().unwrap().to_str().unwrap();
        let overrides: Vec<PathBuf> = [chart.join("override.yaml")]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        // Helm applies the chart's values.yaml itself; prepuller is given it first.
        let rendered = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&rendered, helm_template(chart, &overrides)).unwrap();
        let mut values = vec![chart.join("values.yaml")];
        values.extend(overrides);

        let expected: Vec<String> = {
            let mut e: Vec<String> = std::fs::read_to_string(chart.join("expected.txt"))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            e.sort();
            e
        };
        let (from_values, _, stderr) = images_from_values(&values, &[]);
        assert_eq!(from_values, expected, "{name}: --values\n{stderr}");
        let (from_manifests, _, stderr) = images_from_manifests(&rendered);
        assert_eq!(from_manifests, expected, "{name}: -f rendered\n{stderr}");
    }
}

#[test]
fn a_tag_the_values_do_not_hold_is_named_with_who_fills_it_in() {
    let chart = Path::new(CHARTS).join("cert-manager");
    // Without the override the tag is the chart's appVersion: Helm renders it, the values do
    // not hold it, and prepuller says so for each image instead of guessing.
    let rendered = helm_template(&chart, &[]);
    let out = run(
        &[
            "images",
            "--values",
            chart.join("values.yaml").to_str().unwrap(),
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let (from_manifests, _, _) = images_from_manifests(&file);
    assert_eq!(from_manifests.len(), 2);
    for image in &from_manifests {
        let untagged = image.strip_suffix(":v1.20.0").unwrap();
        assert!(
            stderr.contains(&format!(
                "{untagged} has no tag or digest here (the chart fills in its appVersion): not listed"
            )),
            "{image}: {stderr}"
        );
    }

    // cass-operator's server image: its tag is each datacenter's serverVersion, whichever path.
    let chart = Path::new(CHARTS).join("k8ssandra-operator");
    let (_, _, stderr) = images_from_values(&[chart.join("values.yaml")], &[]);
    assert!(
        stderr.contains("docker.io/k8ssandra/cass-management-api has no tag or digest here (cass-operator tags it with each CassandraDatacenter's serverVersion: docker.io/k8ssandra/cass-management-api:<serverVersion>-ubi)"),
        "{stderr}"
    );
    std::fs::write(&file, helm_template(&chart, &[])).unwrap();
    let (_, _, stderr) = images_from_manifests(&file);
    assert!(
        stderr.contains("docker.io/k8ssandra/cass-management-api:<serverVersion>-ubi: cass-operator tags it with each CassandraDatacenter's serverVersion"),
        "{stderr}"
    );
}

#[test]
fn a_disabled_component_is_a_comment_unless_include_disabled_which_matches_helm_with_it_enabled() {
    let chart = Path::new(CHARTS).join("kube-prometheus-stack");
    let values = [chart.join("values.yaml"), chart.join("override.yaml")];
    let (listed, stdout, _) = images_from_values(&values, &[]);
    let alertmanager = "mirror.example.com/prometheus/alertmanager:v0.28.1";
    assert!(!listed.iter().any(|i| i == alertmanager), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "#   - {alertmanager}  # values.yaml alertmanager.alertmanagerSpec.image: disabled in these values\n"
        )),
        "{stdout}"
    );

    let (all, _, _) = images_from_values(&values, &["--include-disabled"]);
    let dir = tempfile::tempdir().unwrap();
    let enable = dir.path().join("enable.yaml");
    std::fs::write(&enable, "alertmanager:\n  enabled: true\n").unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(
        &rendered,
        helm_template(&chart, &[chart.join("override.yaml"), enable]),
    )
    .unwrap();
    let (from_manifests, _, _) = images_from_manifests(&rendered);
    assert_eq!(all, from_manifests);
    assert!(all.iter().any(|i| i == alertmanager), "{all:?}");

    // Nothing but disabled images: nothing to pull, said as such.
    let off = dir.path().join("off.yaml");
    std::fs::write(
        &off,
        "stargate:\n  enabled: false\n  image: {repository: stargateio/stargate-4_0, tag: v1.0.40}\n",
    )
    .unwrap();
    let out = run(&["images", "--values", off.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no images found in the input but 1 in blocks disabled in these values (--include-disabled lists them)"),
        "{}",
        text(&out.stderr)
    );
}
