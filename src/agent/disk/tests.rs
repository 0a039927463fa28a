//! The disk guard through the agent, on the in-memory runtime: its image filesystem is 100 MB
//! and each image takes twice its listed size there (content and unpacked snapshot).

use std::time::Duration;

use crate::agent::testing::{setup, state};
use crate::k8s::{desired, reason};
use crate::status::{HoldReason, ImageState, StatusHub};

const MB: u64 = 1_000_000;
const CAPACITY: u64 = 100 * MB;
const MOUNT: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";

fn held(hub: &StatusHub, key: &str) -> Option<(HoldReason, String)> {
    hub.snapshot()
        .images
        .into_iter()
        .find(|i| i.normalized == key)
        .and_then(|i| i.held_back)
        .map(|h| (h.reason, h.message))
}

/// 70 % used; two images, each sized by an earlier tag of its repository (5 MB listed, 10 MB
/// on disk): the required one (declared second) takes the filesystem to the 80 % limit and is
/// pulled; the optional one would take it to 90 %: held back, saying so.
#[tokio::test(start_paused = true)]
async fn the_pull_that_would_cross_the_limit_is_held_back_required_images_first() {
    let mut s = setup(
        "images:\n  - image: r.example/opt:2\n    required: false\n  - image: r.example/req:2\n",
    );
    s.rt.add_image("r.example/opt:1", 5 * MB);
    s.rt.add_image("r.example/req:1", 5 * MB);
    s.rt.set_image_fs(MOUNT, 50 * MB, Some(CAPACITY));
    s.rt.set_pull_size("r.example/req:2", 5 * MB);
    s.agent.resync().await;
    s.agent.settle().await;

    assert_eq!(s.rt.stats().pulls, vec!["r.example/req:2"]);
    assert_eq!(s.rt.disk_used(), 80 * MB);
    let (reason, message) = held(&s.hub, "r.example/opt:2").expect("opt held back");
    assert_eq!(reason, HoldReason::DiskThreshold);
    assert!(
        message.contains("about 10.0 MB on disk")
            && message.contains("to 90.0% (70.0% now, 80.0% with the pulls under way)")
            && message.contains("above the pull limit 80%")
            && message.contains("image GC starts at 85%"),
        "{message}"
    );
    assert_eq!(held(&s.hub, "r.example/req:2"), None);
    let status = s.hub.snapshot();
    let disk = status.disk.as_ref().unwrap();
    assert_eq!(disk.held_back, vec!["r.example/opt:2"]);
    assert_eq!(disk.usage_percent, Some(70.0));
    assert_eq!(disk.pull_limit_percent, 80);
    // Only an optional image is held back: the node is warm, and the condition says why.
    let d = desired(&status);
    assert!(d.status, "{d:?}");
    assert!(
        d.message
            .contains("held back by the disk guard: r.example/opt:2 (disk threshold"),
        "{d:?}"
    );

    // Still no room on the next pass; once an image goes, the optional one is pulled.
    s.agent.resync().await;
    s.agent.settle().await;
    assert_eq!(s.rt.stats().pulls.len(), 1);
    s.rt.remove_image("r.example/opt:1");
    s.agent.resync().await;
    s.agent.settle().await;
    assert_eq!(s.rt.stats().pulls.len(), 2);
    assert_eq!(held(&s.hub, "r.example/opt:2"), None);
    assert_eq!(state(&s.hub, "r.example/opt:2"), ImageState::Present);
    assert!(s.hub.snapshot().disk.unwrap().held_back.is_empty());
}

/// A required image that does not fit makes the condition False / DiskPressure.
#[tokio::test(start_paused = true)]
async fn a_required_image_held_back_makes_the_node_cold_with_disk_pressure() {
    let mut s = setup("images: [r.example/big:2]");
    s.rt.add_image("r.example/big:1", 10 * MB);
    s.rt.set_image_fs(MOUNT, 50 * MB, Some(CAPACITY));
    s.agent.resync().await;
    s.agent.settle().await;
    assert!(s.rt.stats().pulls.is_empty());
    let d = desired(&s.hub.snapshot());
    assert!(!d.status);
    assert_eq!(d.reason, reason::DISK_PRESSURE);
    assert!(
        d.message.contains("r.example/big:2 (disk threshold"),
        "{d:?}"
    );
}

/// The hour: an image gone two hours after its pull is not counted; gone twice within an hour
/// of its pull, it is held back (while usage stays above the 80 % low threshold) and pulled
/// again once usage is below it.
#[tokio::test(start_paused = true)]
async fn an_image_gone_twice_within_an_hour_of_its_pull_waits_for_the_low_threshold() {
    let mut s =
        setup("diskGuard: {highThresholdPercent: 95, marginPercent: 5}\nimages: [r.example/a:1]");
    // 85 %: above the low threshold, below the pull limit (90 %).
    s.rt.set_image_fs(MOUNT, 83 * MB, Some(CAPACITY));
    let pulls = |s: &crate::agent::testing::Setup| s.rt.stats().pulls.len();
    let pass = async |s: &mut crate::agent::testing::Setup| {
        s.agent.resync().await;
        s.agent.settle().await;
    };
    pass(&mut s).await;
    assert_eq!(pulls(&s), 1);
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    s.rt.remove_image("r.example/a:1");
    pass(&mut s).await;
    assert_eq!(pulls(&s), 2, "gone after 2 h: pulled again, not counted");
    for gone in 1..=2 {
        tokio::time::advance(Duration::from_secs(10 * 60)).await;
        s.rt.remove_image("r.example/a:1");
        pass(&mut s).await;
        if gone == 1 {
            assert_eq!(pulls(&s), 3, "gone once within the hour: pulled again");
        }
    }
    assert_eq!(pulls(&s), 3, "gone twice within the hour: held back");
    let (reason, message) = held(&s.hub, "r.example/a:1").expect("held back");
    assert_eq!(reason, HoldReason::GcThrash);
    assert!(
        message.contains("gone 2 times within 1h")
            && message.contains("below the low threshold 80% (now 83.0%)"),
        "{message}"
    );
    let d = desired(&s.hub.snapshot());
    assert_eq!((d.status, d.reason), (false, reason::DISK_PRESSURE));

    // Hours later, still above the low threshold: still held back.
    tokio::time::advance(Duration::from_secs(5 * 3600)).await;
    pass(&mut s).await;
    assert_eq!(pulls(&s), 3);
    // The GC freed space: below 80 %, pulled again.
    s.rt.set_image_fs(MOUNT, 70 * MB, Some(CAPACITY));
    pass(&mut s).await;
    assert_eq!(pulls(&s), 4);
    assert_eq!(held(&s.hub, "r.example/a:1"), None);
    assert_eq!(state(&s.hub, "r.example/a:1"), ImageState::Present);
}

/// The README's "within an hour", bracketed: removals 61 minutes after the pull, however many,
/// never hold the image back; two at 59 minutes do.
#[tokio::test(start_paused = true)]
async fn the_thrash_window_is_one_hour() {
    let mut s =
        setup("diskGuard: {highThresholdPercent: 95, marginPercent: 5}\nimages: [r.example/a:1]");
    // 83 %: above the low threshold, below the pull limit (90 %): only the thrash guard holds.
    s.rt.set_image_fs(MOUNT, 83 * MB, Some(CAPACITY));
    let pulls = |s: &crate::agent::testing::Setup| s.rt.stats().pulls.len();
    let pass = async |s: &mut crate::agent::testing::Setup| {
        s.agent.resync().await;
        s.agent.settle().await;
    };
    pass(&mut s).await;
    assert_eq!(pulls(&s), 1);
    for n in 2..=4 {
        tokio::time::advance(Duration::from_secs(61 * 60)).await;
        s.rt.remove_image("r.example/a:1");
        pass(&mut s).await;
        assert_eq!(pulls(&s), n, "gone 61 min after its pull: not GC thrash");
    }
    assert_eq!(held(&s.hub, "r.example/a:1"), None);
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(59 * 60)).await;
        s.rt.remove_image("r.example/a:1");
        pass(&mut s).await;
    }
    assert_eq!(pulls(&s), 5, "gone twice 59 min after its pull: held back");
    let (reason, _) = held(&s.hub, "r.example/a:1").expect("held back");
    assert_eq!(reason, HoldReason::GcThrash);
}

/// No visible mountpoint: no capacity check (a pull that would fill the disk goes ahead), the
/// thrash guard still works, and `/status` says why.
#[tokio::test(start_paused = true)]
async fn without_a_visible_mountpoint_only_the_thrash_guard_works() {
    let mut s = setup("images: [r.example/a:2]");
    s.rt.add_image("r.example/a:1", 40 * MB);
    s.rt.set_image_fs(MOUNT, 50 * MB, None);
    s.agent.resync().await;
    s.agent.settle().await;
    assert_eq!(s.rt.stats().pulls.len(), 1, "no capacity check");
    let disk = s.hub.snapshot().disk.unwrap();
    assert_eq!(disk.capacity_bytes, None);
    let why = disk.capacity_unknown.expect("said why");
    assert!(
        why.contains(&format!(
            "cannot read the size of the image filesystem at {MOUNT}"
        )) && why.contains("--host-root (PREPULLER_HOST_ROOT)"),
        "{why}"
    );
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(60)).await;
        s.rt.remove_image("r.example/a:2");
        s.agent.resync().await;
        s.agent.settle().await;
    }
    assert_eq!(s.rt.stats().pulls.len(), 2);
    let (reason, message) = held(&s.hub, "r.example/a:2").expect("held back");
    assert_eq!(reason, HoldReason::GcThrash);
    assert!(message.contains("its usage is unknown"), "{message}");
}

/// Nothing to pull and nothing held back: the guard asks the runtime nothing.
#[tokio::test(start_paused = true)]
async fn an_idle_pass_does_not_look_at_the_disk() {
    let mut s = setup("images: [r.example/a:1]");
    s.rt.set_image_fs(MOUNT, 10 * MB, Some(CAPACITY));
    s.agent.resync().await;
    s.agent.settle().await;
    assert_eq!(s.rt.stats().image_fs_calls, 1, "before the pull");
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(60)).await;
        s.agent.resync().await;
    }
    assert_eq!(s.rt.stats().image_fs_calls, 1);
}

#[test]
fn host_paths_go_under_the_host_root() {
    use std::path::Path;
    assert_eq!(
        super::host_path(Some(Path::new("/host")), MOUNT),
        Path::new("/host/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs")
    );
    assert_eq!(super::host_path(None, MOUNT), Path::new(MOUNT));
    assert_eq!(super::repository_of("r:5000/a/b:1"), "r:5000/a/b");
    assert_eq!(super::repository_of("r:5000/a/b"), "r:5000/a/b");
    assert_eq!(super::repository_of("r/a@sha256:00"), "r/a");
}
