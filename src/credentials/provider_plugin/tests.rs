//! Real plugins: small shell scripts, run as the kubelet would run them.

use std::os::unix::fs::PermissionsExt;

use secrecy::ExposeSecret;

use super::*;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// A plugin named `name` whose body is `script`; `$0.runs` counts its runs, `$0.stdin`
    /// keeps its last request.
    fn plugin(&self, name: &str, script: &str) {
        std::fs::create_dir_all(self.bin()).unwrap();
        let path = self.bin().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat > \"$0.stdin\"\necho run >> \"$0.runs\"\n{script}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.bin().join(format!("{name}.runs")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// A config with one provider per `(name, matchImages, defaultCacheDuration, extra YAML)`.
    fn sources(&self, providers: &[(&str, &str, &str, &str)], timeout: Duration) -> PluginSources {
        let mut text =
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n"
                .to_string();
        for (name, matches, cache, extra) in providers {
            text.push_str(&format!(
                "  - name: {name}\n    matchImages: {matches}\n    defaultCacheDuration: {cache}\n    apiVersion: {V1}\n{extra}"
            ));
        }
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, text).unwrap();
        PluginSources::new(&[CredentialSource::KubeletCredentialProviders {
            config,
            bin_dir: self.bin(),
            timeout,
        }])
    }
}

fn answer(key_type: &str, duration: Option<&str>, auth: &[(&str, &str)]) -> String {
    let auth: Vec<String> = auth
        .iter()
        .map(|(key, user)| format!(r#""{key}":{{"username":"{user}","password":"pw-{user}"}}"#))
        .collect();
    let duration = duration
        .map(|d| format!(r#""cacheDuration":"{d}","#))
        .unwrap_or_default();
    format!(
        r#"echo '{{"apiVersion":"{V1}","kind":"CredentialProviderResponse","cacheKeyType":"{key_type}",{duration}"auth":{{{}}}}}'"#,
        auth.join(",")
    )
}

async fn lookup(s: &PluginSources, image: &str) -> (Vec<String>, Vec<String>) {
    let mut keyring = Keyring::default();
    let mut problems = Vec::new();
    s.add_to(image, &mut keyring, &mut problems).await;
    (
        keyring
            .lookup(image)
            .iter()
            .map(|c| format!("{} {}", c.describe(), c.auth.username))
            .collect(),
        problems.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn cache_keys_and_the_registry_of_an_image() {
    assert_eq!(
        registry("r.example.com:5000/team/app"),
        "r.example.com:5000"
    );
    assert_eq!(
        CacheKey::for_image("r.io/a/b"),
        [
            CacheKey::Image("r.io/a/b".into()),
            CacheKey::Registry("r.io".into()),
            CacheKey::Global
        ]
    );
    assert_eq!(
        CacheKey::new(CacheKeyType::Registry, "r.io/a/b"),
        CacheKey::Registry("r.io".into())
    );
}

#[tokio::test]
async fn match_images_globs_as_the_kubelet_and_the_request_on_stdin() {
    let s = Setup::new();
    s.plugin(
        "ecr",
        &answer("Image", Some("0"), &[("*.dkr.ecr.*.amazonaws.com", "AWS")]),
    );
    let sources = s.sources(
        &[(
            "ecr",
            "['*.dkr.ecr.*.amazonaws.com', 'https://*.dkr.ecr.*.amazonaws.com.cn']",
            "12h",
            "    args: [get-credentials]\n    env: [{name: AWS_PROFILE, value: nodes}]\n",
        )],
        Duration::from_secs(10),
    );
    let image = "123.dkr.ecr.eu-west-1.amazonaws.com/team/app";
    let (creds, problems) = lookup(&sources, image).await;
    assert_eq!(
        creds,
        ["kubelet credential provider ecr (key *.dkr.ecr.*.amazonaws.com) AWS"]
    );
    assert!(problems.is_empty(), "{problems:?}");
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.bin().join("ecr.stdin")).unwrap()).unwrap();
    assert_eq!(
        request,
        serde_json::json!({"apiVersion": V1, "kind": "CredentialProviderRequest", "image": image})
    );
    // No match: the glob needs as many labels, the same port; the plugin is not run.
    for other in [
        "dkr.ecr.eu-west-1.amazonaws.com/app",
        "123.dkr.ecr.eu-west-1.amazonaws.com:443/app",
        "a.b.dkr.ecr.eu-west-1.amazonaws.com/app",
        "docker.io/library/nginx",
    ] {
        assert_eq!(lookup(&sources, other).await, (vec![], vec![]), "{other}");
    }
    assert_eq!(s.runs("ecr"), 1);
    // A scheme in matchImages is ignored, as url parsing ignores it in the kubelet.
    lookup(&sources, "1.dkr.ecr.cn-north-1.amazonaws.com.cn/app").await;
    assert_eq!(s.runs("ecr"), 2);
}

#[tokio::test]
async fn args_and_env_reach_the_plugin() {
    let s = Setup::new();
    s.plugin(
        "p",
        &format!(
            "[ \"$1\" = get-credentials ] && [ \"$AWS_PROFILE\" = nodes ] && [ -n \"$PATH\" ] || exit 3\n{}",
            answer("Image", None, &[("r.io", "ok")])
        ),
    );
    let sources = s.sources(
        &[(
            "p",
            "[r.io]",
            "1m",
            "    args: [get-credentials]\n    env: [{name: AWS_PROFILE, value: nodes}]\n",
        )],
        Duration::from_secs(10),
    );
    let (creds, problems) = lookup(&sources, "r.io/app").await;
    assert_eq!(creds.len(), 1, "{problems:?}");
}

#[tokio::test]
async fn cache_key_types_and_durations_are_honoured() {
    let s = Setup::new();
    s.plugin("img", &answer("Image", None, &[("r.io", "img")]));
    s.plugin("reg", &answer("Registry", Some("1h"), &[("q.io", "reg")]));
    s.plugin("glob", &answer("Global", Some("0"), &[("g.io", "glob")]));
    let sources = s.sources(
        &[
            ("img", "[r.io]", "5m", ""),
            ("reg", "[q.io]", "0", ""),
            ("glob", "[g.io]", "1h", ""),
        ],
        Duration::from_secs(10),
    );
    for image in [
        "r.io/a", "r.io/b", "r.io/a", "q.io/a", "q.io/b", "g.io/a", "g.io/a",
    ] {
        let (creds, problems) = lookup(&sources, image).await;
        assert_eq!(creds.len(), 1, "{image}: {problems:?}");
    }
    assert_eq!(s.runs("img"), 2, "Image: once per image (default 5m)");
    assert_eq!(s.runs("reg"), 1, "Registry: once for the registry (its 1h)");
    assert_eq!(s.runs("glob"), 2, "cacheDuration 0: never cached");
    // After a refusal the cache is dropped.
    sources.clear();
    lookup(&sources, "q.io/a").await;
    assert_eq!(s.runs("reg"), 2);
    assert_eq!(sources.runs(), 6, "every run counted");
}

/// Real time: a paused clock would jump to the plugin's timeout while it runs.
#[tokio::test]
async fn cached_answers_expire() {
    let s = Setup::new();
    s.plugin("reg", &answer("Registry", None, &[("q.io", "reg")]));
    let sources = s.sources(&[("reg", "[q.io]", "1s", "")], Duration::from_secs(10));
    lookup(&sources, "q.io/a").await;
    lookup(&sources, "q.io/b").await;
    assert_eq!(s.runs("reg"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lookup(&sources, "q.io/b").await;
    assert_eq!(s.runs("reg"), 2, "defaultCacheDuration 1s is over");
}

/// Pulls starting together for one registry run the plugin once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_one_run() {
    let s = Setup::new();
    s.plugin(
        "reg",
        &format!(
            "sleep 0.2\n{}",
            answer("Registry", None, &[("q.io", "reg")])
        ),
    );
    let sources = Arc::new(s.sources(&[("reg", "[q.io]", "10m", "")], Duration::from_secs(10)));
    let lookups: Vec<_> = (0..6)
        .map(|i| {
            let sources = sources.clone();
            tokio::spawn(async move { lookup(&sources, &format!("q.io/app{i}")).await.0.len() })
        })
        .collect();
    for l in lookups {
        assert_eq!(l.await.unwrap(), 1);
    }
    assert_eq!(s.runs("reg"), 1);
}

#[tokio::test]
async fn failures_name_the_plugin_and_the_image_and_keep_secrets_out() {
    let s = Setup::new();
    s.plugin(
        "fails",
        "echo 'no role for the node' >&2\necho pw-leaked\nexit 2",
    );
    s.plugin("garbage", "echo 'pw-leaked is not json'");
    s.plugin("hangs", "echo starting >&2\nexec sleep 30");
    s.plugin(
        "chatty",
        &format!(
            "echo 'debug: using key sekrit-key' >&2\n{}",
            answer("Image", None, &[("c.io", "u")])
        ),
    );
    let sources = s.sources(
        &[
            ("fails", "[f.io]", "1m", ""),
            ("garbage", "[x.io]", "1m", ""),
            ("hangs", "[h.io]", "1m", ""),
            ("missing", "[m.io]", "1m", ""),
            (
                "chatty",
                "[c.io]",
                "1m",
                "    env: [{name: KEY, value: sekrit-key}]\n",
            ),
        ],
        Duration::from_millis(500),
    );
    let one = |(creds, problems): (Vec<String>, Vec<String>)| {
        assert!(creds.is_empty(), "{creds:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].clone()
    };
    let e = one(lookup(&sources, "f.io/app").await);
    assert_eq!(
        e,
        "kubelet credential provider fails: failed for image f.io/app: exit code 2; its stderr: no role for the node"
    );
    let e = one(lookup(&sources, "x.io/app").await);
    assert_eq!(
        e,
        "kubelet credential provider garbage: gave no usable answer for image x.io/app: its output is not a JSON object (at line 1, column 1)"
    );
    let e = one(lookup(&sources, "h.io/app").await);
    assert_eq!(
        e,
        "kubelet credential provider hangs: gave no answer for image h.io/app within 500ms and was killed (kubeletCredentialProviders.timeout); its stderr: starting"
    );
    let e = one(lookup(&sources, "m.io/app").await);
    assert!(
        e.starts_with(&format!(
            "kubelet credential provider missing: cannot run {}/missing for image m.io/app: No such file",
            s.bin().display()
        )),
        "{e}"
    );
    // Success: stderr is dropped. On failure the env values are scrubbed.
    let (creds, problems) = lookup(&sources, "c.io/app").await;
    assert_eq!((creds.len(), problems.len()), (1, 0));
    s.plugin("chatty", "echo 'debug: using key sekrit-key' >&2\nexit 1");
    sources.clear();
    let e = one(lookup(&sources, "c.io/other").await);
    assert!(
        e.ends_with("its stderr: debug: using key [REDACTED]"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unreadable_config_is_a_problem_named_by_its_file() {
    let s = Setup::new();
    let config = s.dir.path().join("nope.yaml");
    let sources = PluginSources::new(&[CredentialSource::KubeletCredentialProviders {
        config: config.clone(),
        bin_dir: s.bin(),
        timeout: Duration::from_secs(1),
    }]);
    let (_, problems) = lookup(&sources, "r.io/a").await;
    assert_eq!(
        problems,
        [format!(
            "kubeletCredentialProviders {0}: {0}: cannot read the kubelet's CredentialProviderConfig: No such file or directory (os error 2)",
            config.display()
        )]
    );
}

#[tokio::test]
async fn a_token_mode_provider_is_reported_not_run() {
    let s = Setup::new();
    s.plugin("sa", &answer("Image", None, &[("r.io", "u")]));
    let sources = s.sources(
        &[(
            "sa",
            "[r.io]",
            "1m",
            "    tokenAttributes: {serviceAccountTokenAudience: x, requireServiceAccount: true}\n",
        )],
        Duration::from_secs(1),
    );
    let (creds, problems) = lookup(&sources, "r.io/a").await;
    assert!(creds.is_empty());
    assert!(problems[0].contains("tokenAttributes"), "{problems:?}");
    assert_eq!(s.runs("sa"), 0);
}

#[tokio::test]
async fn the_password_reaches_the_keyring_only() {
    let s = Setup::new();
    s.plugin("p", &answer("Image", None, &[("r.io", "u")]));
    let sources = s.sources(&[("p", "[r.io]", "1m", "")], Duration::from_secs(5));
    let mut keyring = Keyring::default();
    let mut problems = Vec::new();
    sources.add_to("r.io/a", &mut keyring, &mut problems).await;
    let found = keyring.lookup("r.io/a");
    assert_eq!(found[0].auth.password.expose_secret(), "pw-u");
    assert!(!format!("{found:?}").contains("pw-u"));
}

/// Whether `pid` still runs (a zombie awaiting its reaper does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn a_plugin_is_killed_at_its_timeout_and_when_the_lookup_is_dropped() {
    let s = Setup::new();
    s.plugin("hangs", "echo $$ > \"$0.pid\"\nexec sleep 30");
    let sources = s.sources(&[("hangs", "[h.io]", "1m", "")], Duration::from_millis(300));
    let pid = || {
        std::fs::read_to_string(s.bin().join("hangs.pid"))
            .unwrap()
            .trim()
            .to_string()
    };
    let (_, problems) = lookup(&sources, "h.io/a").await;
    assert!(problems[0].contains("was killed"), "{problems:?}");
    assert!(!alive(&pid()), "killed at the timeout");

    let sources = s.sources(&[("hangs", "[h.io]", "1m", "")], Duration::from_secs(20));
    std::fs::remove_file(s.bin().join("hangs.pid")).unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(500), lookup(&sources, "h.io/a")).await;
    assert!(cancelled.is_err(), "still running at 500ms");
    let pid = pid();
    // kill_on_drop sends the signal at once; the kernel may take a moment to deliver it.
    for _ in 0..50 {
        if !alive(&pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the plugin outlived the lookup that started it");
}

/// Lookups queued behind a run that times out share its error rather than each waiting out
/// another run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_behind_a_timed_out_run_do_not_run_it_again() {
    let s = Setup::new();
    s.plugin("hangs", "exec sleep 30");
    let sources = Arc::new(s.sources(&[("hangs", "[h.io]", "1m", "")], Duration::from_millis(300)));
    let lookups: Vec<_> = (0..4)
        .map(|i| {
            let sources = sources.clone();
            tokio::spawn(async move { lookup(&sources, &format!("h.io/app{i}")).await.1 })
        })
        .collect();
    for l in lookups {
        let problems = l.await.unwrap();
        assert!(problems[0].contains("within 300ms"), "{problems:?}");
    }
    assert_eq!(s.runs("hangs"), 1);
}
