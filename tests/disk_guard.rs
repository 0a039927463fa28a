//! The disk guard end to end: the agent binary, a real containerd whose root sits on a 64 MiB
//! tmpfs made by the test, images made by the test, and removals as the kubelet's image GC does
//! them (CRI `RemoveImage`).
//!
//! Each image holds 7.5 MiB of uncompressed layers, so it takes about 15 MiB (23 %) of the
//! filesystem: its content plus its unpacked snapshot.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1::{ImageSpec, PullImageRequest};
use serde_json::Value;
use testkit::{AgentProc, Containerd, Registry, push_image};

const MIB: u64 = 1024 * 1024;
const FS_SIZE: u64 = 64 * MIB;
const LAYERS: usize = 7 * 1024 * 1024 + 512 * 1024;

/// A size-limited tmpfs, unmounted on drop (a failing test included).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "mount a tmpfs at {} (the test runs as root)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn image<'a>(status: &'a Value, normalized: &str) -> &'a Value {
    status["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["normalized"] == normalized))
        .unwrap_or(&Value::Null)
}

fn held_reason(status: &Value, normalized: &str) -> Option<String> {
    image(status, normalized)["heldBack"]["reason"]
        .as_str()
        .map(String::from)
}

fn present(status: &Value, normalized: &str) -> bool {
    image(status, normalized)["state"] == "Present"
}

async fn cri_pull(containerd: &Containerd, reference: &str) {
    containerd
        .image_client()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("CRI PullImage {reference}: {e}"));
}

/// What the guard saw, for the report: usage and the held-back images.
fn figures(what: &str, s: &Value) {
    let disk = &s["disk"];
    eprintln!(
        "{what}: usage {}% of {} bytes (images {} bytes), pull limit {}%, low {}%, held back {}",
        disk["usagePercent"],
        disk["capacityBytes"],
        disk["imageBytes"],
        disk["pullLimitPercent"],
        disk["lowThresholdPercent"],
        disk["heldBack"]
    );
}

/// 64 MiB, two earlier tags present (47 %): the required new tag (23 % more, sized by its
/// earlier tag) fits under the 80 % limit, the optional one (declared first) would reach 94 %:
/// held back with the reason. The required image removed twice within an hour of its pull:
/// held back for GC thrash (its room goes to the optional one), until the GC frees the
/// filesystem below the low threshold (40 % here, as set on this kubelet); then pulled again.
#[tokio::test]
async fn pulls_stop_at_the_threshold_and_an_image_gc_keeps_removing_waits_for_the_low_threshold() {
    let dir = tempfile::Builder::new()
        .prefix("prepuller-dg-")
        .tempdir()
        .unwrap();
    let cdir = dir.path().join("containerd");
    // Dropped in reverse: containerd and the registry stop before the unmount.
    let _tmpfs = Tmpfs::mount(&cdir.join("root"), FS_SIZE);
    let registry = Registry::start(&dir.path().join("registry"));
    let containerd = Containerd::start(&cdir);
    let reg = registry.host();
    for (n, (repo, tag)) in [("req", "1"), ("opt", "1"), ("req", "2"), ("opt", "2")]
        .into_iter()
        .enumerate()
    {
        push_image(&reg, &format!("app/{repo}"), tag, n as u64 + 1, LAYERS).await;
    }
    let name = |repo: &str, tag: &str| format!("{reg}/app/{repo}:{tag}");
    let (req1, opt1, req2, opt2) = (
        name("req", "1"),
        name("opt", "1"),
        name("req", "2"),
        name("opt", "2"),
    );
    // An earlier deploy left the previous tags.
    cri_pull(&containerd, &req1).await;
    cri_pull(&containerd, &opt1).await;

    let config = dir.path().join("images.yaml");
    std::fs::write(
        &config,
        format!(
            "resyncInterval: 1s\nbackoff: {{initial: 1s, max: 2s}}\n\
             diskGuard: {{lowThresholdPercent: 40}}\n\
             images:\n  - image: {opt2}\n    required: false\n  - {req2}\n"
        ),
    )
    .unwrap();
    let agent = AgentProc::start_on(
        dir.path(),
        &containerd.endpoint(),
        &config,
        Path::new("/nonexistent/kubeconfig"),
        &[("PREPULLER_HOST_ROOT", "/")],
    );

    // 1. The threshold.
    let s = agent
        .wait_status("req:2 pulled, opt:2 held back", |s| {
            present(s, &req2) && held_reason(s, &opt2).as_deref() == Some("diskThreshold")
        })
        .await;
    figures("threshold", &s);
    let message = image(&s, &opt2)["heldBack"]["message"].as_str().unwrap();
    eprintln!("opt:2 held back: {message}");
    assert!(
        message.contains("above the pull limit 80% (the kubelet's image GC starts at 85%)"),
        "{message}"
    );
    assert_eq!(s["disk"]["capacityBytes"], FS_SIZE);
    assert_eq!(s["disk"]["heldBack"], serde_json::json!([opt2]));
    assert!(!containerd.image_refs().contains(&opt2));
    assert_eq!(agent.get("/readyz").await.unwrap().0, 200, "only optional");

    // 2. GC thrash: removed twice within the hour.
    containerd.cri_remove_image(&req2).await;
    agent
        .wait_status("req:2 pulled again after its first removal", |s| {
            present(s, &req2) && containerd.image_refs().contains(&req2)
        })
        .await;
    containerd.cri_remove_image(&req2).await;
    let s = agent
        .wait_status("req:2 held back for GC thrash", |s| {
            held_reason(s, &req2).as_deref() == Some("gcThrash") && present(s, &opt2)
        })
        .await;
    figures("thrash", &s);
    let message = image(&s, &req2)["heldBack"]["message"].as_str().unwrap();
    eprintln!("req:2 held back: {message}");
    assert!(
        message.contains("gone 2 times within 1h of its pull")
            && message.contains("below the low threshold 40%"),
        "{message}"
    );
    assert!(!containerd.image_refs().contains(&req2));
    assert_eq!(agent.get("/readyz").await.unwrap().0, 503);
    let (_, metrics) = agent.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("prepuller_images_held_back{reason=\"gc_thrash\",required=\"true\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prepuller_image_fs_usage_ratio 0."),
        "{metrics}"
    );

    // 3. The GC frees the earlier tags: below 40 %, req:2 is pulled again.
    containerd.cri_remove_image(&req1).await;
    containerd.cri_remove_image(&opt1).await;
    let s = agent
        .wait_status("req:2 pulled again below the low threshold", |s| {
            present(s, &req2) && image(s, &req2)["heldBack"].is_null() && s["ready"] == true
        })
        .await;
    figures("released", &s);
    assert!(
        agent
            .log()
            .contains("the image filesystem is below 40%: pulling it again"),
        "{}",
        agent.log()
    );
    drop(agent);
}

/// No image filesystem visible (testkit's agents get a host root that does not exist): pulls go
/// ahead with only the thrash guard, said once in the log however many checks follow, and in
/// `/status`.
#[tokio::test]
async fn without_the_mountpoint_the_agent_says_so_once_and_pulls() {
    let sb = testkit::Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, 1024 * 1024).await;
    let config = sb.path().join("images.yaml");
    // `gone:1` does not exist: retried every 2 s, so the guard looks at the disk again and again.
    std::fs::write(
        &config,
        format!(
            "resyncInterval: 1s\nbackoff: {{initial: 1s, max: 2s}}\nimages:\n  - {reg}/team/web:1.0\n  - {reg}/team/gone:1\n"
        ),
    )
    .unwrap();
    let agent = AgentProc::start(&sb, &config);
    let web = format!("{reg}/team/web:1.0");
    let s = agent.wait_status("web present", |s| present(s, &web)).await;
    let why = s["disk"]["capacityUnknown"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("cannot read the size of the image filesystem at /nonexistent-host-root/"),
        "{s:#}"
    );
    assert!(s["disk"]["capacityBytes"].is_null(), "{s:#}");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert_eq!(
        log.matches("only the GC-thrash guard works").count(),
        1,
        "{log}"
    );
    let pulls = log.matches("gone:1").count();
    assert!(pulls >= 2, "the missing image was retried meanwhile: {log}");
}
