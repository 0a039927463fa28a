//! Proves the harness itself: real registry + containerd, an image pushed over the registry API
//! and pulled through CRI. Timings print with `cargo test --test harness -- --nocapture`.

use std::time::Instant;

use k8s_cri::v1::{ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest};
use testkit::{Registry, Sandbox, manifest_digest, push_image};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

#[tokio::test]
async fn push_then_pull_through_cri() {
    let t = Instant::now();
    let mut sb = Sandbox::start();
    println!(
        "sandbox start (registry + containerd in parallel): {:?}",
        t.elapsed()
    );
    let host = sb.registry.host();

    let t = Instant::now();
    let digest = push_image(&host, "harness/app", "v1", 1, 20 << 20).await;
    println!("push 20 MB: {:?}", t.elapsed());
    assert_eq!(
        push_image(&host, "harness/app", "v1", 1, 20 << 20).await,
        digest,
        "same seed must give the same digest"
    );

    let image = sb.image_ref("harness/app", "v1");
    let mut cri = sb.containerd.image_client().await;
    let t = Instant::now();
    let pulled = cri
        .pull_image(PullImageRequest {
            image: spec(&image),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", sb.containerd.log_tail()))
        .into_inner();
    println!("CRI pull 20 MB: {:?}", t.elapsed());

    let refs = sb.containerd.image_refs();
    assert!(refs.contains(&image), "{image} not in {refs:?}");
    assert!(
        refs.contains(&format!("{host}/harness/app@{digest}")),
        "{refs:?}"
    );
    assert!(refs.contains(&pulled.image_ref), "image id not in {refs:?}");
    let status = cri
        .image_status(ImageStatusRequest {
            image: spec(&image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("image status after pull");
    assert_eq!(
        status.repo_digests,
        [format!("{host}/harness/app@{digest}")]
    );

    // Tag drift: new content under the same tag.
    let drifted = push_image(&host, "harness/app", "v1", 2, 1 << 20).await;
    assert_ne!(drifted, digest);
    assert_eq!(
        manifest_digest(&host, "harness/app", "v1").await,
        Some(drifted)
    );

    // remove_image is seen by CRI (through containerd events).
    sb.containerd.remove_image(&image);
    assert!(!sb.containerd.image_refs().contains(&image));
    let gone = cri
        .image_status(ImageStatusRequest {
            image: spec(&image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.image.is_none(), "CRI still reports {image}");

    // containerd crash + restart keeps its image store; old channels must reconnect.
    sb.containerd.kill();
    assert!(cri.list_images(ListImagesRequest::default()).await.is_err());
    let t = Instant::now();
    sb.containerd.restart();
    println!("containerd restart: {:?}", t.elapsed());
    let digest_ref = format!("{host}/harness/app@{digest}");
    assert!(sb.containerd.image_refs().contains(&digest_ref));
    let mut cri = sb.containerd.image_client().await;
    cri.pull_image(PullImageRequest {
        image: spec(&image),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("pull after restart: {e}\n{}", sb.containerd.log_tail()));
    assert!(sb.containerd.image_refs().contains(&image));
}

#[tokio::test]
async fn registry_stop_and_restart_keeps_port_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut reg = Registry::start(dir.path());
    println!("registry start: {:?}", t.elapsed());
    let host = reg.host();
    let digest = push_image(&host, "harness/r", "1", 7, 64 << 10).await;

    reg.stop();
    let down = testkit::http_client()
        .get(format!("http://{host}/v2/"))
        .send()
        .await;
    assert!(down.is_err(), "registry still answers after stop");

    let t = Instant::now();
    reg.restart();
    println!("registry restart: {:?}", t.elapsed());
    assert_eq!(reg.host(), host);
    assert_eq!(manifest_digest(&host, "harness/r", "1").await, Some(digest));
}

#[tokio::test]
async fn containerd_pull_fails_while_registry_is_down() {
    let mut sb = Sandbox::start();
    let host = sb.registry.host();
    push_image(&host, "harness/down", "1", 3, 64 << 10).await;
    sb.registry.stop();
    let mut cri = sb.containerd.image_client().await;
    let err = cri
        .pull_image(PullImageRequest {
            image: spec(&sb.image_ref("harness/down", "1")),
            ..Default::default()
        })
        .await
        .expect_err("pull with the registry down");
    assert!(err.message().contains("connection refused"), "{err}");
    sb.registry.restart();
    cri.pull_image(PullImageRequest {
        image: spec(&sb.image_ref("harness/down", "1")),
        ..Default::default()
    })
    .await
    .expect("pull after registry restart");
}
