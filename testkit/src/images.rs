//! OCI images made in memory from seeded random layers, pushed through the registry's HTTP API.

use sha2::{Digest, Sha256};

use crate::http_client;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed layers: the blob digest is also the diff_id.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image built in memory, ready to push.
pub struct TestImage {
    pub manifest: Vec<u8>,
    /// "sha256:..." of `manifest`: what the registry reports and CRI shows in repo digests.
    pub digest: String,
    pub config: Vec<u8>,
    /// "sha256:..." of `config`: containerd's image id (CRI `image_ref`).
    pub config_digest: String,
    pub layers: Vec<Vec<u8>>,
    /// "sha256:..." of each layer (computed once: SHA-256 is slow in unoptimized builds).
    pub layer_digests: Vec<String>,
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// OCI architecture name of this machine (the platform containerd's CRI pulls for).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Two uncompressed tar layers holding `layer_bytes` random bytes in total (split in halves),
/// plus a small file naming the seed. Deterministic in `seed`: same seed, same digests.
pub fn build_image(seed: u64, layer_bytes: usize) -> TestImage {
    let mut rng = SplitMix64(seed);
    let sizes = [layer_bytes / 2, layer_bytes - layer_bytes / 2];
    let layers: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let mut tar = tar::Builder::new(Vec::with_capacity(size + 4096));
            let dir = format!("layer{i}");
            append_tar(&mut tar, &format!("{dir}/"), &[], tar::EntryType::Directory);
            let seed_text = format!("seed {seed}, layer {i}\n");
            append_tar(
                &mut tar,
                &format!("{dir}/seed"),
                seed_text.as_bytes(),
                tar::EntryType::Regular,
            );
            append_tar(
                &mut tar,
                &format!("{dir}/data"),
                &data,
                tar::EntryType::Regular,
            );
            tar.into_inner().expect("finish tar")
        })
        .collect();
    let layer_digests: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/layer0/data"],
        },
        // Uncompressed layers: diff_id == blob digest.
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }))
    .expect("config json");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().zip(&layer_digests).map(|(l, d)| serde_json::json!({
            "mediaType": OCI_LAYER_TAR, "digest": d, "size": l.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    TestImage {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        layers,
        layer_digests,
    }
}

/// Tiny PRNG with a fixed algorithm: ~10x faster than `StdRng` in unoptimized test builds, and
/// digests can't change with a `rand` upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

fn append_tar(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], kind: tar::EntryType) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("tar path");
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    tar.append(&h, data).expect("tar append");
}

/// Build (see `build_image`) and push an image to `registry_host` as `repo:tag`. Returns the
/// manifest digest. Same seed => same digest; a new seed on an existing tag makes tag drift.
pub async fn push_image(
    registry_host: &str,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_bytes: usize,
) -> String {
    let image = build_off_thread(seed, layer_bytes).await;
    push_built(registry_host, repo, tag, &image).await;
    image.digest
}

/// `build_image` on a blocking thread: hashing megabytes would stall the test's runtime.
async fn build_off_thread(seed: u64, layer_bytes: usize) -> TestImage {
    tokio::task::spawn_blocking(move || build_image(seed, layer_bytes))
        .await
        .expect("build image")
}

/// Push an image with no tag (manifest PUT by digest), for `repo@sha256:...` references.
pub async fn push_image_by_digest(
    registry_host: &str,
    repo: &str,
    seed: u64,
    layer_bytes: usize,
) -> String {
    let image = build_off_thread(seed, layer_bytes).await;
    push_built(registry_host, repo, &image.digest, &image).await;
    image.digest
}

/// Push blobs (skipping ones the registry has) then the manifest under `reference` (tag or digest).
pub async fn push_built(registry_host: &str, repo: &str, reference: &str, image: &TestImage) {
    let http = http_client();
    let base = format!("http://{registry_host}/v2/{repo}");
    push_blob(&http, &base, &image.config, &image.config_digest).await;
    for (blob, digest) in image.layers.iter().zip(&image.layer_digests) {
        push_blob(&http, &base, blob, digest).await;
    }
    let resp = http
        .put(format!("{base}/manifests/{reference}"))
        .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e}"));
    let status = resp.status();
    let got = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "PUT manifest {repo}:{reference}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        got.as_deref(),
        Some(image.digest.as_str()),
        "registry digest differs"
    );
}

async fn push_blob(http: &reqwest::Client, base: &str, blob: &[u8], digest: &str) {
    let head = http
        .head(format!("{base}/blobs/{digest}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD blob {digest}: {e}"));
    if head.status().is_success() {
        return;
    }
    let resp = http
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST upload: {e}"));
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::ACCEPTED,
        "POST {base}/blobs/uploads/"
    );
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("upload Location header");
    // Location may be relative; it already carries query state (_state=...).
    let mut url = resp.url().join(location).expect("upload URL");
    url.query_pairs_mut().append_pair("digest", digest);
    let resp = http
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT blob {digest}: {e}"));
    let status = resp.status();
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "PUT blob {digest}: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Delete a manifest by digest (all tags pointing at it disappear): "image gone" tests.
pub async fn delete_manifest(registry_host: &str, repo: &str, digest: &str) {
    let resp = http_client()
        .delete(format!(
            "http://{registry_host}/v2/{repo}/manifests/{digest}"
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE manifest {repo}@{digest}: {e}"));
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::ACCEPTED,
        "DELETE manifest {repo}@{digest}"
    );
}

/// Digest the registry currently serves for `repo:reference`, None on 404.
pub async fn manifest_digest(registry_host: &str, repo: &str, reference: &str) -> Option<String> {
    let resp = http_client()
        .head(format!(
            "http://{registry_host}/v2/{repo}/manifests/{reference}"
        ))
        .header(reqwest::header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD manifest {repo}:{reference}: {e}"));
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "HEAD manifest {repo}:{reference}: {}",
        resp.status()
    );
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}
