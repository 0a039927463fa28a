use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("images.yaml"))
}

#[test]
fn full_example_from_the_docs() {
    let c = parse(
        r#"
parallelism: 4
perRegistryParallelism: 2
pullTimeout: 10m
backoff: {initial: 10s, max: 5m}
images:
  - redislabs/redis:7.2.4-64
  - image: registry.example.com/redislabs/operator:7.2.4-7
    required: false
  - registry: myregistry.example.com
    repository: myrepo/cass-management-api
    tag: 3.11.10-v0.1.26
    pullPolicy: Always
  - busybox
"#,
    )
    .unwrap();
    assert_eq!(c.parallelism, 4);
    assert_eq!(c.per_registry_parallelism, 2);
    assert_eq!(c.pull_timeout, Duration::from_secs(600));
    assert_eq!(c.backoff.max, Duration::from_secs(300));
    let got: Vec<_> = c
        .images
        .iter()
        .map(|i| (i.reference.to_string(), i.required, i.policy, i.line))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "docker.io/redislabs/redis:7.2.4-64".to_string(),
                true,
                PullPolicy::IfNotPresent,
                7
            ),
            (
                "registry.example.com/redislabs/operator:7.2.4-7".to_string(),
                false,
                PullPolicy::IfNotPresent,
                8
            ),
            (
                "myregistry.example.com/myrepo/cass-management-api:3.11.10-v0.1.26".to_string(),
                true,
                PullPolicy::Always,
                10
            ),
            (
                "docker.io/library/busybox:latest".to_string(),
                true,
                PullPolicy::Always,
                14
            ),
        ]
    );
}

#[test]
fn defaults_follow_the_kubelet() {
    let c = parse("images: [nginx:1.25]").unwrap();
    assert_eq!(c.parallelism, 3);
    assert_eq!(c.per_registry_parallelism, 3);
    assert_eq!(c.backoff, BackoffSettings::default());
    assert_eq!(c.images[0].policy, PullPolicy::IfNotPresent);
    assert!(c.images[0].required);
}

#[test]
fn duplicates_are_merged_with_the_strictest_settings() {
    let c = parse(
            "images:\n  - image: nginx:1.25\n    required: false\n  - docker.io/library/nginx:1.25\n  - image: index.docker.io/library/nginx:1.25\n    pullPolicy: Always\n",
        )
        .unwrap();
    assert_eq!(c.images.len(), 1);
    assert!(c.images[0].required);
    assert_eq!(c.images[0].policy, PullPolicy::Always);
    assert_eq!(c.merged.len(), 2);
    assert!(c.merged[0].contains("images.yaml:4"), "{:?}", c.merged);
}

#[test]
fn unknown_key_names_file_line_and_field() {
    let e = parse("images:\n  - image: nginx:1.25\n    requird: true\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(3), Some(5)));
    assert_eq!(e.field.as_deref(), Some("images[0].requird"));
    assert!(
        e.message.contains("unknown field `requird`"),
        "{}",
        e.message
    );
    assert!(
        e.headline()
            .starts_with("images.yaml:3:5: field `images[0].requird`: "),
        "{}",
        e.headline()
    );
}

#[test]
fn bad_reference_is_reported_at_its_line() {
    let e = parse("images:\n  - nginx:1.25\n  - Nginx:1.25\n").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(e.field.as_deref(), Some("images[1]"));
    assert!(e.message.contains("must be lowercase"), "{}", e.message);
}

#[test]
fn bad_duration_names_the_field() {
    let e = parse("pullTimeout: ten minutes\nimages: []\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("pullTimeout"));
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("invalid duration"), "{}", e.message);
}

#[test]
fn bad_values_are_rejected() {
    for (text, field, needle) in [
        ("parallelism: 0\nimages: []", "parallelism", "at least 1"),
        ("parallelism: -2\nimages: []", "parallelism", ""),
        (
            "backoff: {initial: 1m, max: 10s}\nimages: []",
            "backoff.max",
            "shorter than",
        ),
        (
            "images:\n  - image: a:1\n    pullPolicy: Sometimes\n",
            "images[0].pullPolicy",
            "Sometimes",
        ),
        (
            "images:\n  - image: a:1\n    repository: b\n",
            "images[0]",
            "either",
        ),
        (
            "images:\n  - required: true\n",
            "images[0]",
            "needs `image`",
        ),
        (
            "images:\n  - image: a:1\n    tag: \"2\"\n",
            "images[0]",
            "go with `repository`",
        ),
        (
            "images:\n  - repository: Myrepo\n",
            "images[0]",
            "lowercase",
        ),
        ("images:\n  - 42\n", "images[0]", "image reference"),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{text}: {}", e.render());
        assert!(e.message.contains(needle), "{text}: {}", e.message);
    }
}

#[test]
fn credential_sources() {
    let c = parse(
            "credentials:\n  - dockerConfig: /var/lib/kubelet/config.json\n  - dockerConfigDir: /etc/prepuller/pull-secrets\n  - secret: {namespace: redis, name: regcred}\n  - nodeDefaults: true\n  - nodeDefaults: true\n    kubeletRootDir: /host/kubelet\nanonymousFallback: true\nimages: []\n",
        )
        .unwrap();
    assert_eq!(
        c.credentials,
        [
            CredentialSource::DockerConfig("/var/lib/kubelet/config.json".into()),
            CredentialSource::DockerConfigDir("/etc/prepuller/pull-secrets".into()),
            CredentialSource::Secret {
                namespace: "redis".into(),
                name: "regcred".into()
            },
            CredentialSource::NodeDefaults {
                kubelet_root_dir: DEFAULT_KUBELET_ROOT_DIR.into()
            },
            CredentialSource::NodeDefaults {
                kubelet_root_dir: "/host/kubelet".into()
            },
        ]
    );
    assert!(c.anonymous_fallback);
    assert!(!parse("images: []").unwrap().anonymous_fallback);
}

#[test]
fn kubelet_credential_providers_source() {
    let c = parse(
        "credentials:\n  - kubeletCredentialProviders:\n      config: /etc/eks/image-credential-provider/config.json\n      binDir: /etc/eks/image-credential-provider\n  - kubeletCredentialProviders: {config: /c.yaml, binDir: /bin, timeout: 5s}\nimages: []\n",
    )
    .unwrap();
    assert_eq!(
        c.credentials,
        [
            CredentialSource::KubeletCredentialProviders {
                config: "/etc/eks/image-credential-provider/config.json".into(),
                bin_dir: "/etc/eks/image-credential-provider".into(),
                timeout: DEFAULT_PLUGIN_TIMEOUT,
            },
            CredentialSource::KubeletCredentialProviders {
                config: "/c.yaml".into(),
                bin_dir: "/bin".into(),
                timeout: Duration::from_secs(5),
            },
        ]
    );
    for (text, needle) in [
        ("{config: /c.yaml}", "binDir"),
        ("{config: /c.yaml, binDir: /b, timeout: 0s}", "more than 0s"),
        (
            "{config: '', binDir: /b}",
            "kubeletCredentialProviders.config is empty",
        ),
        ("{config: /c, binDir: /b, timout: 1s}", "unknown field"),
    ] {
        let e = parse(&format!(
            "credentials:\n  - kubeletCredentialProviders: {text}\nimages: []"
        ))
        .unwrap_err();
        assert!(e.message.contains(needle), "{text}: {}", e.render());
    }
}

#[test]
fn bad_credential_entries_name_the_entry() {
    for (text, needle) in [
        (
            "credentials:\n  - dockerConfig: /a\n    secret: {namespace: a, name: b}\nimages: []",
            "exactly one of",
        ),
        ("credentials:\n  - {}\nimages: []", "exactly one of"),
        (
            "credentials:\n  - dockerconfig: /a\nimages: []",
            "unknown field",
        ),
        (
            "credentials:\n  - secret: {namespace: Redis, name: regcred}\nimages: []",
            "not a valid Kubernetes",
        ),
        (
            "credentials:\n  - secret: {name: regcred}\nimages: []",
            "namespace",
        ),
        (
            "credentials:\n  - dockerConfig: /a\n    kubeletRootDir: /b\nimages: []",
            "goes with nodeDefaults",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(
            e.field
                .as_deref()
                .is_some_and(|f| f.starts_with("credentials[0]")),
            "{text}: {}",
            e.render()
        );
        assert!(e.line.is_some_and(|l| l >= 2), "{text}: {}", e.render());
        assert!(e.message.contains(needle), "{text}: {}", e.message);
    }
}

#[test]
fn missing_images_and_broken_yaml_are_errors() {
    let e = parse("parallelism: 2\n").unwrap_err();
    assert!(e.message.contains("images"), "{}", e.render());
    let e = parse("images: [\n").unwrap_err();
    assert!(e.line.is_some(), "{}", e.render());
}

#[test]
fn missing_file_names_it() {
    let e = Config::load(Path::new("/nonexistent/prepuller.yaml")).unwrap_err();
    assert!(
        e.headline()
            .starts_with("/nonexistent/prepuller.yaml: cannot read"),
        "{}",
        e.headline()
    );
}

/// The layout the kubelet gives a mounted ConfigMap: real files under a timestamped
/// directory, `..data` pointing at it, and one top-level link per key.
fn configmap_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("..2026_11_23_12_00_00.000000001");
    std::fs::create_dir(&real).unwrap();
    for (name, text) in files {
        std::fs::write(real.join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(real.file_name().unwrap(), dir.path().join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn a_configmap_directory_merges_its_image_sets() {
    let dir = configmap_dir(&[
        (
            "base.yaml",
            "parallelism: 2\nresyncInterval: 30s\nimages:\n  - nginx:1.25\n  - image: redis:7\n    required: false\n",
        ),
        (
            "team.yml",
            "images:\n  - image: docker.io/library/redis:7\n    pullPolicy: Always\n    refreshInterval: 10m\n  - busybox:1.36\n",
        ),
        ("notes.txt", "not a config"),
    ]);
    let c = Config::load(dir.path()).unwrap();
    assert_eq!(c.parallelism, 2);
    assert_eq!(c.resync_interval, Duration::from_secs(30));
    let got: Vec<_> = c
        .images
        .iter()
        .map(|i| (i.reference.to_string(), i.required, i.policy))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "docker.io/library/nginx:1.25".into(),
                true,
                PullPolicy::IfNotPresent
            ),
            ("docker.io/library/redis:7".into(), true, PullPolicy::Always),
            (
                "docker.io/library/busybox:1.36".into(),
                true,
                PullPolicy::IfNotPresent
            ),
        ]
    );
    assert_eq!(c.images[1].refresh_interval, Duration::from_secs(600));
    assert_eq!(c.images[0].refresh_interval, DEFAULT_REFRESH_INTERVAL);
    assert_eq!(c.merged.len(), 1);
}

#[test]
fn a_setting_given_twice_differently_names_both_files() {
    let dir = configmap_dir(&[
        ("a.yaml", "parallelism: 2\nimages: [nginx:1.25]\n"),
        ("b.yaml", "parallelism: 5\nimages: [redis:7]\n"),
    ]);
    let e = Config::load(dir.path()).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("parallelism"));
    assert!(e.file.ends_with("b.yaml"), "{}", e.headline());
    assert!(e.message.contains("a.yaml"), "{}", e.headline());
    // The same value twice is fine.
    let dir = configmap_dir(&[
        ("a.yaml", "parallelism: 2\nimages: [nginx:1.25]\n"),
        ("b.yaml", "parallelism: 2\nimages: [redis:7]\n"),
    ]);
    assert_eq!(Config::load(dir.path()).unwrap().images.len(), 2);
}

#[test]
fn an_error_in_one_file_of_a_directory_names_that_file() {
    let dir = configmap_dir(&[
        ("a.yaml", "images: [nginx:1.25]\n"),
        ("b.yaml", "images:\n  - Redis:7\n"),
    ]);
    let e = Config::load(dir.path()).unwrap_err();
    assert!(e.file.ends_with("b.yaml"), "{}", e.headline());
    assert_eq!(e.line, Some(2));
    let empty = tempfile::tempdir().unwrap();
    let e = Config::load(empty.path()).unwrap_err();
    assert!(e.message.contains("no *.yaml"), "{}", e.headline());
}

#[test]
fn node_readiness_defaults_and_switches() {
    let c = parse("images: [nginx:1.25]").unwrap();
    assert_eq!(c.node, NodeSettings::default());
    assert_eq!(c.node.label.as_deref(), Some("prepuller.dev/ready"));
    assert_eq!(
        c.node.startup_taint.as_deref(),
        Some("startup-taint.cluster-autoscaler.kubernetes.io/prepuller")
    );
    assert_eq!(c.node.taint_timeout, Duration::from_secs(900));
    let c = parse(
            "nodeReadiness:\n  label: \"\"\n  startupTaint: readiness.k8s.io/images\n  taintTimeout: 5m\n  events: false\nimages: [nginx:1.25]",
        )
        .unwrap();
    assert_eq!(c.node.label, None, "an empty label turns it off");
    assert_eq!(
        c.node.startup_taint.as_deref(),
        Some("readiness.k8s.io/images")
    );
    assert_eq!(c.node.taint_timeout, Duration::from_secs(300));
    assert!(!c.node.events);
}

#[test]
fn bad_node_settings_name_file_line_and_field() {
    let e = parse("nodeReadiness:\n  label: \"Bad Label\"\nimages: []\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("nodeReadiness"), "{}", e.render());
    assert_eq!(e.line, Some(2), "{}", e.render());
    assert!(e.message.contains("label \"Bad Label\""), "{}", e.render());
    let e = parse("nodeReadiness:\n  taintTimout: 5m\nimages: []\n").unwrap_err();
    assert!(e.message.contains("taintTimout"), "{}", e.render());
    let e =
        parse("nodeSelector:\n  matchExpressions:\n    - {key: pool, operator: In}\nimages: []\n")
            .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("nodeSelector"), "{}", e.render());
    assert!(e.line.is_some_and(|l| l >= 2), "{}", e.render());
    assert!(
        e.message.contains("needs at least one value"),
        "{}",
        e.render()
    );
}

#[test]
fn a_file_whose_node_selector_does_not_select_this_node_contributes_no_images() {
    let dir = configmap_dir(&[
        ("base.yaml", "images: [nginx:1.25]\n"),
        (
            "gpu.yaml",
            "nodeSelector:\n  matchLabels: {pool: gpu}\nparallelism: 2\nimages: [cuda:12, nginx:1.25]\n",
        ),
    ]);
    let sources = Config::read_sources(dir.path()).unwrap();
    let refs =
        |c: &Config| -> Vec<String> { c.images.iter().map(|i| i.reference.to_string()).collect() };
    let labels = |v: &str| Labels::from([("pool".to_string(), v.to_string())]);
    let gpu = Config::from_sources_for_node(dir.path(), &sources, Some(&labels("gpu"))).unwrap();
    assert_eq!(
        refs(&gpu),
        ["docker.io/library/nginx:1.25", "docker.io/library/cuda:12"]
    );
    assert!(gpu.skipped_sets.is_empty());
    let cpu = Config::from_sources_for_node(dir.path(), &sources, Some(&labels("cpu"))).unwrap();
    assert_eq!(refs(&cpu), ["docker.io/library/nginx:1.25"]);
    assert_eq!(cpu.parallelism, 2, "settings apply on every node");
    assert_eq!(cpu.skipped_sets.len(), 1);
    let note = cpu.skipped_sets[0].to_string();
    assert!(
        note.contains("gpu.yaml (2 images) is for nodes matching pool=gpu"),
        "{note}"
    );
    // Without labels (no cluster) only the sets without a selector apply.
    let unknown = Config::from_sources(dir.path(), &sources).unwrap();
    assert_eq!(refs(&unknown), ["docker.io/library/nginx:1.25"]);
    assert!(unknown.skipped_sets[0].labels_unknown);
}

#[test]
fn disk_guard_defaults_follow_the_kubelet_and_bad_thresholds_are_refused() {
    let c = parse("images: [nginx:1.25]").unwrap();
    assert_eq!(c.disk_guard, DiskGuardSettings::default());
    assert!(c.disk_guard.enabled);
    assert_eq!(
        (
            c.disk_guard.high_threshold_percent,
            c.disk_guard.low_threshold_percent,
            c.disk_guard.pull_limit_percent()
        ),
        (85, 80, 80)
    );
    let c = parse(
        "diskGuard:\n  highThresholdPercent: 90\n  lowThresholdPercent: 70\n  marginPercent: 2\nimages: [nginx:1.25]",
    )
    .unwrap();
    assert_eq!(c.disk_guard.pull_limit_percent(), 88);
    assert_eq!(c.disk_guard.low_threshold_percent, 70);
    let c = parse("diskGuard: {enabled: false}\nimages: [nginx:1.25]").unwrap();
    assert!(!c.disk_guard.enabled);
    for (yaml, says) in [
        (
            "{lowThresholdPercent: 85}",
            "lowThresholdPercent (85) must be below highThresholdPercent (85)",
        ),
        ("{highThresholdPercent: 101}", "from 1 to 100, not 101"),
        ("{marginPercent: 85}", "marginPercent (85) must be below"),
        ("{highThresholdPrecent: 90}", "highThresholdPrecent"),
    ] {
        let e = parse(&format!("diskGuard: {yaml}\nimages: []\n")).unwrap_err();
        assert!(
            e.field
                .as_deref()
                .is_some_and(|f| f.starts_with("diskGuard")),
            "{}",
            e.render()
        );
        assert_eq!(e.line, Some(1), "{}", e.render());
        assert!(e.message.contains(says), "{yaml}: {}", e.render());
    }
}

#[test]
fn fleet_is_off_unless_written_and_bad_values_are_refused_at_their_line() {
    assert_eq!(parse("images: [nginx:1.25]").unwrap().fleet, None);
    let c = parse(
        "fleet:\n  maxConcurrentNodes: 2\n  registries:\n    registry.example.com: {maxConcurrentNodes: 5}\n  onUnavailable: wait\n  leaseDuration: 30s\nimages: [nginx:1.25]",
    )
    .unwrap();
    let f = c.fleet.unwrap();
    assert_eq!(f.slots_for("registry.example.com"), 5);
    assert_eq!(f.slots_for("docker.io"), 2);
    assert_eq!(f.on_unavailable, OnUnavailable::Wait);
    assert_eq!(f.lease_duration, Duration::from_secs(30));
    let f = parse("fleet: {}\nimages: []").unwrap().fleet.unwrap();
    assert_eq!(
        (f.max_concurrent_nodes, f.on_unavailable, f.lease_duration),
        (1, OnUnavailable::Proceed, DEFAULT_LEASE_DURATION)
    );
    for (yaml, says) in [
        ("{maxConcurrentNodes: 0}", "from 1 to 1000, not 0"),
        (
            "{registries: {\"Registry.Example.com/x\": {maxConcurrentNodes: 2}}}",
            "is not a registry host",
        ),
        (
            "{registries: {quay.io: {maxConcurrentNodes: 0}}}",
            "registries.\"quay.io\".maxConcurrentNodes",
        ),
        ("{leaseDuration: 1s}", "leaseDuration must be from 10s"),
        ("{onUnavailable: fail}", "fail"),
        ("{maxConcurentNodes: 2}", "maxConcurentNodes"),
    ] {
        let e = parse(&format!("images: []\nfleet: {yaml}\n")).unwrap_err();
        assert!(
            e.field.as_deref().is_some_and(|f| f.starts_with("fleet")),
            "{}",
            e.render()
        );
        assert_eq!(e.line, Some(2), "{}", e.render());
        assert!(e.message.contains(says), "{yaml}: {}", e.render());
    }
}
