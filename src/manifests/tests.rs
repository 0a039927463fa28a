use super::*;
use crate::config::Config;

const CHART: &str = include_str!("../../tests/fixtures/images/chart.yaml");
const REC: &str = include_str!("../../tests/fixtures/images/rec.yaml");
const K8SSANDRA: &str = include_str!("../../tests/fixtures/images/k8ssandra-overrides.yaml");

fn input(name: &str, text: &str) -> Input {
    Input {
        name: name.into(),
        text: text.into(),
    }
}

fn manifests(text: &str) -> Found {
    let mut found = Found::default();
    found.add_manifests(&input("m.yaml", text)).unwrap();
    found
}

fn values(text: &str) -> Found {
    values_files(&[("values.yaml", text)])
}

/// Several `--values` files, in order, merged and read.
fn values_files(files: &[(&str, &str)]) -> Found {
    let mut found = Found::default();
    for (name, text) in files {
        found.add_values(&input(name, text)).unwrap();
    }
    found.compose_values().unwrap();
    found
}

fn manifest_error(text: &str) -> ManifestError {
    let mut found = Found::default();
    found.add_manifests(&input("m.yaml", text)).unwrap_err()
}

/// The rendered config as `check` reads it: (image as written, policy, required), in file order.
fn listed(found: &Found) -> Vec<(String, PullPolicy, bool)> {
    let text = render(found);
    let config = Config::parse(&text, Path::new("images.yaml"))
        .unwrap_or_else(|e| panic!("{}\n{text}", e.render()));
    config
        .images
        .iter()
        .map(|i| (i.declared.clone(), i.policy, i.required))
        .collect()
}

fn names(found: &Found) -> Vec<String> {
    listed(found).into_iter().map(|(n, _, _)| n).collect()
}

fn pod_spec(image: &str) -> String {
    format!("spec:\n  containers:\n    - name: c\n      image: {image}\n")
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

#[test]
fn every_workload_kind_gives_the_images_of_its_pod_template() {
    let pod = pod_spec("example.com/pod:1");
    let template = |image: &str| indent(&format!("template:\n{}", indent(&pod_spec(image), 2)), 2);
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n{pod}"
    )];
    docs.push(format!(
        "apiVersion: v1\nkind: PodTemplate\nmetadata: {{name: t}}\ntemplate:\n{}",
        indent(&pod_spec("example.com/podtemplate:1"), 2)
    ));
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
    ] {
        let image = format!("example.com/{}:1", kind.to_lowercase());
        docs.push(format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: w}}\nspec:\n{}",
            template(&image)
        ));
    }
    docs.push(format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n{}",
        indent(&template("example.com/cronjob:1"), 4)
    ));
    let found = manifests(&docs.join("---\n"));
    assert_eq!(
        names(&found),
        [
            "example.com/cronjob:1",
            "example.com/daemonset:1",
            "example.com/deployment:1",
            "example.com/job:1",
            "example.com/pod:1",
            "example.com/podtemplate:1",
            "example.com/replicaset:1",
            "example.com/replicationcontroller:1",
            "example.com/statefulset:1",
        ]
    );
    assert_eq!(found.objects.values().sum::<usize>(), 9);
    assert!(found.skipped.is_empty());
}

#[test]
fn init_and_ephemeral_containers_count_and_ephemeral_only_images_are_optional() {
    let found = manifests(
        "kind: Pod\nmetadata: {name: p, namespace: ns}\nspec:\n  initContainers:\n    - {name: i, image: example.com/init:1}\n  containers:\n    - {name: c, image: example.com/app:1}\n  ephemeralContainers:\n    - {name: d, image: example.com/debug:1}\n    - {name: e, image: example.com/app:1}\n",
    );
    assert_eq!(
        listed(&found),
        [
            ("example.com/app:1".into(), PullPolicy::IfNotPresent, true),
            (
                "example.com/debug:1".into(),
                PullPolicy::IfNotPresent,
                false
            ),
            ("example.com/init:1".into(), PullPolicy::IfNotPresent, true),
        ]
    );
    assert!(render(&found).contains("# Pod ns/p"));
}

#[test]
fn list_objects_and_typed_lists_are_read_item_by_item() {
    let found = manifests(
        "apiVersion: v1\nkind: List\nitems:\n  - kind: Pod\n    metadata: {name: a}\n    spec: {containers: [{name: c, image: 'example.com/a:1'}]}\n  - kind: DeploymentList\n    items:\n      - kind: Deployment\n        metadata: {name: b}\n        spec: {template: {spec: {containers: [{name: c, image: 'example.com/b:1'}]}}}\n  - kind: Service\n    metadata: {name: s}\n",
    );
    assert_eq!(names(&found), ["example.com/a:1", "example.com/b:1"]);
    assert_eq!(found.skipped.get("Service"), Some(&1));
    // An error inside a List names the item.
    let e = manifest_error(
        "kind: List\nitems:\n  - kind: Pod\n    spec: {containers: [{name: c, image: 7}]}\n",
    );
    assert_eq!(
        e.field.as_deref(),
        Some("items[0].spec.containers[0].image")
    );
}

#[test]
fn json_as_kubectl_prints_it_one_object_or_several() {
    let list = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "example.com/web:1", "imagePullPolicy": "Always"}],
                                     "imagePullSecrets": [{"name": "regcred"}]}}}}
  ]
}"#;
    let found = manifests(list);
    assert_eq!(
        listed(&found),
        [("example.com/web:1".into(), PullPolicy::Always, true)]
    );
    assert!(found.secrets.contains(&PullSecret {
        namespace: Some("shop".into()),
        name: "regcred".into()
    }));
    let two = "{\"kind\": \"Pod\", \"spec\": {\"containers\": [{\"image\": \"a:1\"}]}}\n{\"kind\": \"Pod\", \"spec\": {\"containers\": [{\"image\": 5}]}}\n";
    let e = manifest_error(two);
    assert_eq!((e.document, e.line), (Some(2), Some(2)), "{e}");
    let flow = manifests("{kind: Pod, spec: {containers: [{name: c, image: 'a:1'}]}}\n");
    assert_eq!(names(&flow), ["a:1"]);
    let bad = manifest_error("{\"kind\": \"Pod\",\n \"spec\": }");
    assert_eq!(bad.line, Some(2), "{bad}");
    assert!(bad.message.starts_with("invalid JSON"), "{bad}");
}

#[test]
fn multi_document_yaml_counts_documents_that_are_not_empty() {
    let text = "---\n# Source: chart/templates/empty.yaml\n---\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: 'example.com/a:1'}]}\n---\n\n---\nkind: Pod\nmetadata: {name: b}\nspec:\n  containers:\n    - name: c\n      imagePullPolicy: Sometimes\n      image: example.com/b:1\n";
    let e = manifest_error(text);
    assert_eq!(e.document, Some(2));
    assert_eq!(e.line, Some(10));
    assert_eq!(e.object.as_deref(), Some("Pod b"));
    assert_eq!(
        e.field.as_deref(),
        Some("spec.containers[0].imagePullPolicy")
    );
    assert_eq!(
        e.to_string(),
        "m.yaml:10: document 2 (Pod b): field `spec.containers[0].imagePullPolicy`: unknown pull policy \"Sometimes\", expected one of Always, IfNotPresent, Never"
    );
}

#[test]
fn a_large_rendered_chart_is_read_whole() {
    // More documents than serde-saphyr's default budget allows (1,024).
    let docs: Vec<String> = (0..1500)
        .map(|i| {
            format!(
                "kind: Pod\nmetadata: {{name: p{i}}}\n{}",
                pod_spec(&format!("a{}:1", i % 10))
            )
        })
        .collect();
    let found = manifests(&docs.join("---\n"));
    assert_eq!(found.objects.get("Pod"), Some(&1500));
    assert_eq!(found.image_count(), 10);
}

#[test]
fn bad_input_names_the_document_and_the_field() {
    let cases = [
        (
            "kind: Deployment\nmetadata: {name: w}\nspec: {template: {spec: {containers: {name: c}}}}\n",
            "m.yaml:1: document 1 (Deployment w): field `spec.template.spec.containers`: expected a list, found a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
            "m.yaml:1: document 1 (Pod p): field `spec.containers[0].image`: missing: every container needs an image",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: 'Bad Image'}]}\n",
            "m.yaml:1: document 1 (Pod p): field `spec.containers[0].image`: invalid image reference \"Bad Image\": repository name must be lowercase",
        ),
        (
            "cassandra:\n  image: {repository: a, tag: b}\n",
            "m.yaml:1: document 1: field `kind`: missing: not a Kubernetes object (a Helm values file goes with --values)",
        ),
        (
            "- kind: Pod\n",
            "m.yaml:1: document 1: expected a Kubernetes object (a mapping with `kind`), found a list",
        ),
        (
            "kind: Pod\nspec: {imagePullSecrets: [{}], containers: [{image: a:1}]}\n",
            "m.yaml:1: document 1 (Pod): field `spec.imagePullSecrets[0].name`: expected the secret's name (a string)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(manifest_error(text).to_string(), want);
    }
    let e = manifest_error(
        "apiVersion: app.redislabs.com/v1\nkind: RedisEnterpriseCluster\nmetadata: {name: rec}\nspec:\n  redisEnterpriseImageSpec: {repository: a, versionTag: b, imagePullPolicy: Sometimes}\n",
    );
    assert_eq!(
        e.field.as_deref(),
        Some("spec.redisEnterpriseImageSpec.imagePullPolicy")
    );
    let syntax = manifest_error("kind: Pod\nspec: [\n");
    assert!(syntax.message.starts_with("invalid YAML"), "{syntax}");
    assert!(syntax.line.is_some(), "{syntax}");
}

#[test]
fn a_rendered_chart_gives_each_image_once_with_the_stricter_policy() {
    let found = manifests(CHART);
    assert_eq!(
        listed(&found),
        [
            (
                "registry.example.com/bitnami/postgresql:16.3.0-debian-12-r14".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            // IfNotPresent in the Deployment, Always in the StatefulSet: Always.
            (
                "registry.example.com/shop/exporter:0.15.0".into(),
                PullPolicy::Always,
                true
            ),
            (
                "registry.example.com/shop/log-agent:1.2.0".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            // An init container of the Deployment and the hook Job.
            (
                "registry.example.com/shop/migrate:2.4.1".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            // `:latest` with IfNotPresent keeps IfNotPresent (the config would default to Always).
            (
                "registry.example.com/shop/report:latest".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/shop/web:2.4.1".into(),
                PullPolicy::IfNotPresent,
                true
            ),
        ]
    );
    assert_eq!(
        found.skipped,
        BTreeMap::from([
            ("ConfigMap".into(), 1),
            ("Service".into(), 1),
            ("ServiceAccount".into(), 1)
        ])
    );
    let text = render(&found);
    assert!(
        text.contains("  - registry.example.com/shop/migrate:2.4.1  # Deployment shop/shop-web, Job shop/shop-migrate\n"),
        "{text}"
    );
    assert!(
        text.contains("# from 5 objects (CronJob 1, DaemonSet 1, Deployment 1, Job 1, StatefulSet 1): 6 images.\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "# credentials:\n#   - secret: {namespace: shop, name: regcred}\n#   - secret: {namespace: shop, name: reports-pull}\n"
        ),
        "{text}"
    );
}

#[test]
fn redis_enterprise_cluster_image_specs_and_the_operator_deployment() {
    let found = manifests(REC);
    assert_eq!(
        listed(&found),
        [
            (
                "registry.example.com/redislabs/k8s-controller:7.22.0-7".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            // The bootstrapper is the operator's image; its Deployment pulls it Always.
            (
                "registry.example.com/redislabs/operator:7.22.0-7".into(),
                PullPolicy::Always,
                true
            ),
            (
                "registry.example.com/redislabs/redis:7.22.0-28".into(),
                PullPolicy::IfNotPresent,
                true
            ),
        ]
    );
    assert_eq!(found.objects.get("RedisEnterpriseCluster"), Some(&1));
    assert_eq!(found.skipped.get("RedisEnterpriseDatabase"), Some(&1));
    assert!(found.secrets.contains(&PullSecret {
        namespace: Some("redis".into()),
        name: "regcred".into()
    }));

    // Without versionTag the operator picks the tag: not listed, and said so.
    let found = manifests(
        "apiVersion: app.redislabs.com/v1\nkind: RedisEnterpriseCluster\nmetadata: {name: rec, namespace: redis}\nspec:\n  redisEnterpriseImageSpec:\n    repository: gcr.io/yourproject/redislabs/redis\n    versionTag: 7.22.0-28\n  redisEnterpriseServicesRiggerImageSpec:\n    repository: gcr.io/yourproject/redislabs/k8s-controller\n  usageMeter:\n    callHomeClient:\n      imageSpec: {repository: gcr.io/yourproject/redislabs/re-call-home-client, versionTag: 7.22.0-7}\n",
    );
    assert_eq!(
        names(&found),
        [
            "gcr.io/yourproject/redislabs/re-call-home-client:7.22.0-7",
            "gcr.io/yourproject/redislabs/redis:7.22.0-28"
        ]
    );
    assert_eq!(
        found.notes,
        [
            "m.yaml: document 1: RedisEnterpriseCluster redis/rec: no image spec for redislabs/operator: the operator's defaults, at the tag of its release, are not listed",
            "m.yaml: document 1: RedisEnterpriseCluster redis/rec: `spec.redisEnterpriseServicesRiggerImageSpec` has no `versionTag`: the operator picks the tag of its own release; add `versionTag` to list gcr.io/yourproject/redislabs/k8s-controller",
        ]
    );
    // Another group's kind of the same name is not Redis Enterprise's.
    let other = manifests(
        "apiVersion: example.com/v1\nkind: RedisEnterpriseCluster\nspec: {redisEnterpriseImageSpec: {repository: a, versionTag: b}}\n",
    );
    assert_eq!(other.image_count(), 0);
}

#[test]
fn a_k8ssandra_overrides_file_gives_every_component_image() {
    let found = values(K8SSANDRA);
    assert_eq!(
        listed(&found),
        [
            (
                "registry.example.com/datastax/cass-config-builder:1.0.4".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/k8ssandra/cass-management-api:4.0.1-v0.1.33".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/k8ssandra/cass-operator:v1.8.0".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/k8ssandra/medusa:0.11.0".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/k8ssandra/system-logger:6c64f9c4".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/stargateio/stargate-4_0:v1.0.40".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "registry.example.com/thelastpickle/cassandra-reaper:3.0.0".into(),
                PullPolicy::Always,
                true
            ),
        ]
    );
    assert!(found.secrets.contains(&PullSecret {
        namespace: None,
        name: "regcred".into()
    }));
    let text = render(&found);
    assert!(
        text.contains(
            "  - registry.example.com/k8ssandra/medusa:0.11.0  # values.yaml medusa.image\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "#   - secret: {namespace: NAMESPACE, name: regcred}  # the release's namespace"
        ),
        "{text}"
    );
}

#[test]
fn helm_values_nested_anywhere_with_global_image_registry_digests_and_numbers() {
    let found = values(
        "global:\n  imageRegistry: mirror.example.com\nimage:\n  registry: docker.io\n  repository: bitnami/redis\n  tag: 7.2.4\nsentinel:\n  image: {repository: bitnami/redis-sentinel, tag: 7.2.4, digest: 'sha256:4c4fa0aed2f0a1e6fd6e7c6f52d4bb6e3e4a2d2f6bfed1e7d6d3c1f7f0a8b9c1'}\nsidecars:\n  - name: exporter\n    image: {repository: bitnami/redis-exporter, tag: 1.58}\nchart:\n  repository: https://charts.example.com\nvolumePermissions:\n  image: {repository: bitnami/os-shell}\n",
    );
    assert_eq!(
        names(&found),
        [
            "mirror.example.com/bitnami/redis-exporter:1.58",
            // As the charts' helper: the digest replaces the tag.
            "mirror.example.com/bitnami/redis-sentinel@sha256:4c4fa0aed2f0a1e6fd6e7c6f52d4bb6e3e4a2d2f6bfed1e7d6d3c1f7f0a8b9c1",
            // global.imageRegistry wins over the image's own registry, as `common.images.image`.
            "mirror.example.com/bitnami/redis:7.2.4",
        ]
    );
    assert_eq!(found.notes.len(), 1, "{:?}", found.notes);
    assert!(
        found.notes[0].contains("volumePermissions.image"),
        "{:?}",
        found.notes
    );
    // Without a global registry the image's own applies, and none means Docker Hub.
    let found = values(
        "a:\n  image: {registry: r.example.com:5000, repository: x/y, tag: '1'}\nb: {repository: redis, tag: '7'}\n",
    );
    assert_eq!(names(&found), ["redis:7", "r.example.com:5000/x/y:1"]);
    // A bad value names the field.
    let mut f = Found::default();
    f.add_values(&input(
        "v.yaml",
        "image: {repository: a, tag: b, pullPolicy: Sometimes}\n",
    ))
    .unwrap();
    let e = f.compose_values().unwrap_err();
    assert_eq!(e.field.as_deref(), Some("image.pullPolicy"));
}

#[test]
fn duplicates_merge_and_the_output_does_not_depend_on_input_order() {
    let docs = [
        "kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: 'docker.io/library/nginx:1.25', imagePullPolicy: IfNotPresent}]}\n",
        "kind: Pod\nmetadata: {name: b, namespace: x}\nspec: {containers: [{name: c, image: 'nginx:1.25', imagePullPolicy: Never}]}\n",
        "kind: Pod\nmetadata: {name: c, namespace: x}\nspec: {containers: [{name: c, image: 'busybox', imagePullPolicy: IfNotPresent}]}\n",
        "kind: Pod\nmetadata: {name: d, namespace: x}\nspec: {containers: [{name: c, image: 'example.com/app:2', imagePullPolicy: Always}], imagePullSecrets: [{name: s}]}\n",
        "kind: Pod\nmetadata: {name: e, namespace: x}\nspec: {containers: [{name: c, image: 'example.com/app:2'}]}\n",
        "kind: Pod\nmetadata: {name: f, namespace: x}\nspec: {containers: [{name: c, image: 'example.com/only-never:latest', imagePullPolicy: Never}]}\n",
    ];
    let forward = manifests(&docs.join("---\n"));
    let mut reversed = docs;
    reversed.reverse();
    let backward = manifests(&reversed.join("---\n"));
    assert_eq!(render(&forward), render(&backward));
    assert_eq!(
        listed(&forward),
        [
            // `busybox` is `:latest`: the kubelet's IfNotPresent is kept against the default.
            ("busybox".into(), PullPolicy::IfNotPresent, true),
            // Two spellings, one image, the shorter kept; `Never` is pulled when missing.
            // Sorted by the reference pulled (docker.io/library/nginx:1.25).
            ("nginx:1.25".into(), PullPolicy::IfNotPresent, true),
            ("example.com/app:2".into(), PullPolicy::Always, true),
            // The kubelet never pulls it, so prepuller must: when missing, not `Never`.
            (
                "example.com/only-never:latest".into(),
                PullPolicy::IfNotPresent,
                true
            ),
        ]
    );
    assert_eq!(
        render(&forward),
        "# Made by `prepuller images `\n# from 6 objects (Pod 6): 4 images.\nimages:\n  - image: busybox  # Pod x/c\n    pullPolicy: IfNotPresent\n  - nginx:1.25  # Pod x/a, Pod x/b\n  - image: example.com/app:2  # Pod x/d, Pod x/e\n    pullPolicy: Always\n  - image: example.com/only-never:latest  # Pod x/f\n    pullPolicy: IfNotPresent\n# The workloads pull with these secrets; to pull with the same credentials, add:\n# credentials:\n#   - secret: {namespace: x, name: s}\n"
    );
}

#[test]
fn a_service_accounts_pull_secrets_are_listed_too() {
    let found = manifests(
        "kind: ServiceAccount\nmetadata: {name: app, namespace: shop}\nimagePullSecrets: [{name: sa-pull}]\n---\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {serviceAccountName: app, containers: [{name: c, image: 'a:1'}]}\n",
    );
    assert_eq!(
        found.secrets,
        BTreeSet::from([PullSecret {
            namespace: Some("shop".into()),
            name: "sa-pull".into()
        }])
    );
    assert_eq!(found.skipped.get("ServiceAccount"), Some(&1));
}

#[test]
fn many_users_of_one_image_are_named_up_to_three() {
    let docs: Vec<String> = (0..5)
        .map(|i| format!("kind: Pod\nmetadata: {{name: p{i}}}\n{}", pod_spec("a:1")))
        .collect();
    let text = render(&manifests(&docs.join("---\n")));
    assert!(
        text.contains("  - a:1  # Pod p0, Pod p1, Pod p2, and 2 more\n"),
        "{text}"
    );
}

#[test]
fn a_directory_is_read_file_by_file_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yaml"), "kind: Pod\n").unwrap();
    std::fs::write(dir.path().join("a.json"), "{}").unwrap();
    std::fs::write(dir.path().join("c.yml"), "").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "").unwrap();
    let inputs = Input::read(dir.path(), || unreachable!()).unwrap();
    let files: Vec<&str> = inputs
        .iter()
        .map(|i| i.name.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(files, ["a.json", "b.yaml", "c.yml"]);
    let empty = tempfile::tempdir().unwrap();
    let e = Input::read(empty.path(), || unreachable!()).unwrap_err();
    assert!(
        e.message.contains("no *.yaml, *.yml or *.json files"),
        "{e}"
    );
    let stdin = Input::read(Path::new("-"), || Ok("kind: Pod\n".into())).unwrap();
    assert_eq!(stdin[0].name, "stdin");
}

#[test]
fn k8ssandra_image_config_blocks_join_registry_repository_and_name() {
    // k8ssandra-operator's `global.imageConfig`: registry/repository/name:tag, the registry from
    // `defaults.registry` unless the image has its own; two images of one repository stay two.
    let found = values(
        "global:\n  imageConfig:\n    defaults: {registry: docker.io}\n    images:\n      reaper: {repository: thelastpickle, name: cassandra-reaper, tag: '5.0.0'}\n      medusa: {registry: ghcr.io, repository: k8ssandra, name: medusa, tag: '0.22.3'}\n      system-logger: {repository: k8ssandra, name: system-logger, tag: v1.24.0}\n    types:\n      cassandra: {repository: k8ssandra, name: cass-management-api, suffix: -ubi}\n",
    );
    assert_eq!(
        names(&found),
        [
            "docker.io/k8ssandra/system-logger:v1.24.0",
            "docker.io/thelastpickle/cassandra-reaper:5.0.0",
            "ghcr.io/k8ssandra/medusa:0.22.3",
        ]
    );
    // The server image's tag is each datacenter's version, not the chart's appVersion.
    assert_eq!(found.notes.len(), 1, "{:?}", found.notes);
    assert!(
        found.notes[0].contains("docker.io/k8ssandra/cass-management-api has no tag or digest here (cass-operator tags it with each CassandraDatacenter's serverVersion: docker.io/k8ssandra/cass-management-api:<serverVersion>-ubi)"),
        "{:?}",
        found.notes
    );
}

#[test]
fn cass_operator_image_config_v1beta1_strings_and_v1beta2_mappings() {
    let v1 = "apiVersion: config.k8ssandra.io/v1beta1\nkind: ImageConfig\nmetadata: {name: image-config}\nimages:\n  system-logger: \"k8ssandra/system-logger:latest\"\n  config-builder: \"datastax/cass-config-builder:1.0-ubi\"\n  cassandra:\n    \"4.0.0\": \"k8ssandra/cassandra-ubi:latest\"\nimageRegistry: \"localhost:5000\"\nimagePullPolicy: IfNotPresent\nimagePullSecret: {name: my-secret}\ndefaults:\n  cassandra: {repository: \"cr.k8ssandra.io/k8ssandra/cass-management-api\", suffix: \"-ubi\"}\n";
    for found in [values(v1), manifests(v1)] {
        assert_eq!(
            listed(&found),
            [
                (
                    "localhost:5000/datastax/cass-config-builder:1.0-ubi".into(),
                    PullPolicy::IfNotPresent,
                    true
                ),
                // IfNotPresent, set in the file, not the `:latest` default.
                (
                    "localhost:5000/k8ssandra/cassandra-ubi:latest".into(),
                    PullPolicy::IfNotPresent,
                    true
                ),
                (
                    "localhost:5000/k8ssandra/system-logger:latest".into(),
                    PullPolicy::IfNotPresent,
                    true
                ),
            ]
        );
        assert!(found.secrets.iter().any(|s| s.name == "my-secret"));
        assert_eq!(found.notes.len(), 1, "{:?}", found.notes);
        assert!(
            found.notes[0].contains("localhost:5000/cr.k8ssandra.io/k8ssandra/cass-management-api:<serverVersion>-ubi: cass-operator tags it with each CassandraDatacenter's serverVersion"),
            "{:?}",
            found.notes
        );
    }

    let v2 = "apiVersion: config.k8ssandra.io/v1beta2\nkind: ImageConfig\ndefaults:\n  registry: docker.io\n  pullSecrets: [regcred]\nimages:\n  reaper: {repository: thelastpickle, name: cassandra-reaper, tag: '5.0.0'}\n  medusa: {registry: ghcr.io, repository: k8ssandra, name: medusa, tag: '0.22.3', pullPolicy: Always}\n  k8ssandra-client: {repository: k8ssandra, name: k8ssandra-client, tag: v0.8.0}\n  config-builder: {name: config-builder-temp, tag: latest}\n  system-logger: {repository: k8ssandra, name: system-logger}\ntypes:\n  dse: {repository: datastax, name: dse-mgmtapi-6_8}\n";
    let found = values(v2);
    assert_eq!(
        listed(&found),
        [
            (
                "docker.io/k8ssandra/k8ssandra-client:v0.8.0".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            // docker.io/library/config-builder-temp, sorted after k8ssandra/.
            (
                "docker.io/config-builder-temp:latest".into(),
                PullPolicy::Always,
                true
            ),
            (
                "docker.io/thelastpickle/cassandra-reaper:5.0.0".into(),
                PullPolicy::IfNotPresent,
                true
            ),
            (
                "ghcr.io/k8ssandra/medusa:0.22.3".into(),
                PullPolicy::Always,
                true
            ),
        ]
    );
    assert!(found.secrets.iter().any(|s| s.name == "regcred"));
    assert_eq!(found.notes.len(), 2, "{:?}", found.notes);
    assert!(found.notes[0].contains("docker.io/k8ssandra/system-logger has no tag here (cass-operator fills in its default tag)"), "{:?}", found.notes);
    assert!(
        found.notes[1].contains("docker.io/datastax/dse-mgmtapi-6_8:<serverVersion>"),
        "{:?}",
        found.notes
    );

    // As cass-operator's chart renders it: inside a ConfigMap.
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cass-operator-manager-config, namespace: k8ssandra}}\ndata:\n  image_config.yaml: |\n{}",
        indent(v2, 4)
    );
    let found = manifests(&cm);
    assert_eq!(found.image_count(), 4);
    assert_eq!(found.objects.get("ConfigMap"), Some(&1));
    assert!(
        render(&found).contains("  - docker.io/thelastpickle/cassandra-reaper:5.0.0  # ConfigMap k8ssandra/cass-operator-manager-config image_config.yaml: images.reaper\n"),
        "{}",
        render(&found)
    );
}

#[test]
fn values_files_merge_as_helm_merges_them() {
    let base = "global: {imageRegistry: ''}\nimage: {registry: registry.k8s.io, repository: kube-state-metrics/kube-state-metrics, tag: v2.14.0}\nexporter:\n  image: {registry: docker.io, repository: bitnami/redis-exporter, tag: 1.58.0}\nsidecars:\n  - image: {repository: bitnami/os-shell, tag: '12'}\n  - image: {repository: bitnami/kubectl, tag: '1.31'}\n";
    // A later tag wins; a later whole block replaces the earlier one (not both listed); a later
    // global.imageRegistry applies to every image; a later list replaces the earlier list.
    let over = "global: {imageRegistry: mirror.example.com}\nimage: {tag: v2.15.0}\nexporter:\n  image: {registry: quay.io, repository: oliver006/redis_exporter, tag: v1.67.0}\nsidecars:\n  - image: {repository: bitnami/os-shell, tag: '13'}\n";
    let found = values_files(&[("values.yaml", base), ("override.yaml", over)]);
    assert_eq!(
        names(&found),
        [
            "mirror.example.com/bitnami/os-shell:13",
            "mirror.example.com/kube-state-metrics/kube-state-metrics:v2.15.0",
            "mirror.example.com/oliver006/redis_exporter:v1.67.0",
        ]
    );
    // The comment names the file that last set the block.
    let text = render(&found);
    assert!(
        text.contains("kube-state-metrics:v2.15.0  # override.yaml image\n"),
        "{text}"
    );
    // `null` in a later file removes the value.
    let found = values_files(&[
        ("values.yaml", base),
        ("override.yaml", "exporter:\n  image: null\n"),
    ]);
    assert!(
        !names(&found).iter().any(|n| n.contains("exporter")),
        "{:?}",
        names(&found)
    );
}

#[test]
fn ingress_nginx_cert_manager_sha_and_image_beside_tag() {
    let d = format!("sha256:{}", "a".repeat(64));
    let found = values(&format!(
        "global:\n  image: {{registry: registry.k8s.io}}\ncontroller:\n  image: {{image: ingress-nginx/controller, repository: '', tag: v1.12.0, digest: '{d}'}}\nold:\n  image: {{image: x/y, repository: example.com/legacy/controller, registry: registry.k8s.io, tag: v1}}\nprometheus:\n  image: {{registry: quay.io, repository: prometheus/prometheus, tag: v3.2.1, sha: '{}'}}\napp: {{image: ghcr.io/org/name, tag: v1}}\n",
        "b".repeat(64)
    ));
    assert_eq!(
        names(&found),
        [
            "example.com/legacy/controller:v1".to_string(),
            "ghcr.io/org/name:v1".into(),
            format!(
                "quay.io/prometheus/prometheus:v3.2.1@sha256:{}",
                "b".repeat(64)
            ),
            // The digest keeps its tag beside it, as the chart renders it.
            format!("registry.k8s.io/ingress-nginx/controller:v1.12.0@{d}"),
        ]
    );
    let found = values(
        "imageRegistry: quay.io\nimageNamespace: jetstack\nimage: {name: cert-manager-controller, tag: v1.20.0}\nwebhook:\n  image: {name: cert-manager-webhook}\ndatacenters:\n  - {name: dc1, size: 3}\n",
    );
    assert_eq!(
        names(&found),
        ["quay.io/jetstack/cert-manager-controller:v1.20.0"]
    );
    assert_eq!(found.notes.len(), 1, "{:?}", found.notes);
    assert!(
        found.notes[0].contains("webhook.image: quay.io/jetstack/cert-manager-webhook has no tag or digest here (the chart fills in its appVersion)"),
        "{:?}",
        found.notes
    );
}

#[test]
fn a_missing_tag_names_who_fills_it_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Chart.yaml"),
        "apiVersion: v2\nname: stack\nversion: 1.0.0\ndependencies:\n  - {name: grafana, version: 8.0.0}\n  - {name: kube-state-metrics, alias: ksm, version: 5.0.0}\n",
    )
    .unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(
        &file,
        "upgradeJob:\n  image: {registry: registry.k8s.io, repository: kubectl, tag: ''}\ngrafana:\n  image: {registry: docker.io, repository: grafana/grafana}\nksm:\n  image: {registry: registry.k8s.io, repository: kube-state-metrics/kube-state-metrics}\noperator:\n  image: {registry: quay.io, repository: prometheus-operator/prometheus-operator}\n",
    )
    .unwrap();
    let mut found = Found::default();
    for input in Input::read(&file, || unreachable!()).unwrap() {
        found.add_values(&input).unwrap();
    }
    found.compose_values().unwrap();
    assert_eq!(found.image_count(), 0);
    let notes = found.notes.join("\n");
    for want in [
        "registry.k8s.io/kubectl has no tag or digest here (the chart fills in the cluster's Kubernetes version)",
        "docker.io/grafana/grafana has no tag or digest here (the subchart `grafana` fills in its appVersion)",
        "registry.k8s.io/kube-state-metrics/kube-state-metrics has no tag or digest here (the subchart `ksm` fills in its appVersion)",
        "quay.io/prometheus-operator/prometheus-operator has no tag or digest here (the chart fills in its appVersion)",
    ] {
        assert!(notes.contains(want), "{want}\n{notes}");
    }
}

#[test]
fn disabled_blocks_are_comments_unless_included() {
    let text = "stargate:\n  enabled: false\n  image: {repository: stargateio/stargate-4_0, tag: v1.0.40}\nmedusa:\n  enabled: true\n  image: {repository: k8ssandra/medusa, tag: 0.11.0}\nreaper:\n  enabled: 'false'\n  sidecar:\n    image: {repository: thelastpickle/cassandra-reaper, tag: 3.0.0}\n";
    let found = values(text);
    assert_eq!(names(&found), ["k8ssandra/medusa:0.11.0"]);
    let out = render(&found);
    assert!(
        out.contains("# Disabled in these values (`enabled: false`; --include-disabled lists them):\n#   - stargateio/stargate-4_0:v1.0.40  # values.yaml stargate.image: disabled in these values\n#   - thelastpickle/cassandra-reaper:3.0.0  # values.yaml reaper.sidecar.image: disabled in these values\n"),
        "{out}"
    );
    let mut found = Found {
        include_disabled: true,
        ..Found::default()
    };
    found.add_values(&input("values.yaml", text)).unwrap();
    found.compose_values().unwrap();
    assert_eq!(found.image_count(), 3);
    assert!(
        render(&found).contains("  - stargateio/stargate-4_0:v1.0.40  # values.yaml stargate.image (`stargate` is disabled in these values)\n"),
        "{}",
        render(&found)
    );
}

#[test]
fn operator_resources_image_fields_and_image_arguments_are_read() {
    let found = manifests(
        "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata: {name: k, namespace: mon}\nspec:\n  image: quay.io/prometheus/prometheus:v3.2.1\n  thanos: {baseImage: quay.io/thanos/thanos, version: v0.37.0, image: 'not a reference'}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: op, namespace: mon}\nspec:\n  template:\n    spec:\n      containers:\n        - name: op\n          image: quay.io/prometheus-operator/prometheus-operator:v0.81.0\n          args:\n            - --prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.81.0\n            - --sidecar-image=docker.io/library/busybox:1.36\n            - --config-file=etc/app/config:1\n            - --log-level=info\n            - LABEL=a/b:1\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, annotations: {image: 'example.com/ann:1'}}\nspec: {size: 3}\n",
    );
    assert_eq!(
        names(&found),
        [
            "docker.io/library/busybox:1.36",
            "quay.io/prometheus-operator/prometheus-config-reloader:v0.81.0",
            "quay.io/prometheus-operator/prometheus-operator:v0.81.0",
            "quay.io/prometheus/prometheus:v3.2.1",
            // `baseImage` without a tag: a reference (`:latest`), as the field holds it.
            "quay.io/thanos/thanos",
        ]
    );
    let text = render(&found);
    for want in [
        "# Prometheus mon/k spec.image\n",
        "# Deployment mon/op (argument --prometheus-config-reloader)\n",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert_eq!(found.objects.get("Prometheus"), Some(&1));
    assert_eq!(found.skipped.get("Widget"), Some(&1));
}

#[test]
fn a_composed_reference_that_is_not_valid_names_its_field_and_file() {
    let mut found = Found::default();
    found
        .add_values(&input(
            "values.yaml",
            "controller:\n  image: {registry: registry.k8s.io, image: ingress-nginx/controller, tag: v1}\n",
        ))
        .unwrap();
    found
        .add_values(&input(
            "override.yaml",
            "controller:\n  image: {image: Ingress-Nginx/Controller}\n",
        ))
        .unwrap();
    let e = found.compose_values().unwrap_err();
    assert_eq!(e.file, "override.yaml");
    assert_eq!(e.field.as_deref(), Some("controller.image.image"));
    assert!(e.message.contains("must be lowercase"), "{e}");
}
