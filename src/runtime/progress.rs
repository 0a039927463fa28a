//! Byte-level pull progress from containerd's native API, served on the same socket as CRI:
//! its content service lists the active ingests (one per blob being fetched, with offset and
//! total), which is what `ctr pull` shows. CRI `PullImage` itself reports nothing until done.
//!
//! An ingest does not name its image (containerd 1.6 CRI pulls use refs such as
//! `layer-sha256:<hex>`), so this module also finds the manifests a pull has committed: they
//! carry `containerd.io/distribution.source.<host>=<repository>` and one
//! `containerd.io/gc.ref.content.l.<n>` label per layer. Attributing ingests to images is the
//! puller's job (`puller::progress`); this is only the client.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    InfoRequest, ListContentRequest, ListStatusesRequest, ReadContentRequest,
};
use serde::Deserialize;
use tonic::Code;
use tonic::transport::Channel;

/// containerd's CRI plugin keeps its images in this namespace.
const NAMESPACE: &str = "k8s.io";
/// Each content call is cheap; a runtime that takes longer is skipped until the next poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A manifest is a few KiB; anything much larger is not one we read.
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

/// One blob being fetched: `digest` from the ingest's ref (`layer-sha256:<hex>` →
/// `sha256:<hex>`), bytes written so far, and its size when the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingest {
    pub digest: String,
    pub offset: u64,
    pub total: Option<u64>,
}

/// A manifest committed from an image's repository: its blobs (config and layers) with their
/// sizes, and whether each is already in the content store (then nothing is fetched for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBlobs {
    pub digest: String,
    /// (digest, size, already stored)
    pub blobs: Vec<(String, u64, bool)>,
}

/// Why progress cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProgressError {
    /// The runtime has no content service (CRI-O, a CRI shim): stop asking.
    #[error("the runtime does not serve containerd's content API: {0}")]
    Unsupported(String),
    /// A call failed this time (runtime restarting, slow): try again on the next poll.
    #[error("reading pull progress failed: {0}")]
    Failed(String),
}

impl From<tonic::Status> for ProgressError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            Code::Unimplemented => ProgressError::Unsupported(s.message().to_string()),
            _ => ProgressError::Failed(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// Where pull progress comes from: containerd's content service, or the fake runtime in
/// tests. A runtime without one answers [`ProgressError::Unsupported`].
pub trait ContentProgress: Send + Sync + 'static {
    /// The ingests in flight now, of every pull.
    fn ingests(&self) -> impl Future<Output = Result<Vec<Ingest>, ProgressError>> + Send;

    /// The manifests fetched from `host`/`repository` that were committed at or after `since`.
    fn manifests(
        &self,
        host: &str,
        repository: &str,
        since: SystemTime,
    ) -> impl Future<Output = Result<Vec<ManifestBlobs>, ProgressError>> + Send;
}

/// containerd's content service on the CRI socket's channel.
#[derive(Clone)]
pub struct ContentClientOnSocket {
    content: ContentClient<Channel>,
}

impl ContentClientOnSocket {
    pub fn new(channel: Channel) -> Self {
        ContentClientOnSocket {
            content: ContentClient::new(channel),
        }
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    r
}

/// `layer-sha256:<hex>` (also `manifest-`, `config-`, `index-`) → `sha256:<hex>`; refs of
/// other clients (`ctr`'s `<ref>-<digest>` …) end with the digest too.
pub fn ingest_digest(reference: &str) -> Option<&str> {
    let at = reference.rfind("sha256:")?;
    let digest = &reference[at..];
    (digest.len() == "sha256:".len() + 64).then_some(digest)
}

/// The label key containerd writes for a registry host: the host without its port.
pub fn source_label(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    format!("containerd.io/distribution.source.{name}")
}

#[derive(Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// The blobs of a manifest's JSON: config first, then the layers.
pub fn manifest_blobs(json: &[u8]) -> Option<Vec<(String, u64)>> {
    let m: Manifest = serde_json::from_slice(json).ok()?;
    if m.layers.is_empty() {
        return None; // an index, or not a manifest
    }
    Some(
        m.config
            .into_iter()
            .chain(m.layers)
            .map(|d| (d.digest, d.size))
            .collect(),
    )
}

/// A manifest lists its layers in `gc.ref.content.l.<n>` labels; an index has `.m.<n>`.
fn lists_layers(labels: &HashMap<String, String>) -> bool {
    labels
        .keys()
        .any(|k| k.starts_with("containerd.io/gc.ref.content.l."))
}

impl ContentClientOnSocket {
    async fn read_small(&self, digest: &str) -> Result<Vec<u8>, ProgressError> {
        let mut client = self.content.clone();
        let mut stream = client
            .read(request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
            if data.len() > MANIFEST_LIMIT {
                return Err(ProgressError::Failed(format!("{digest} is not a manifest")));
            }
        }
        Ok(data)
    }

    async fn stored(&self, digest: &str) -> Result<bool, ProgressError> {
        let mut client = self.content.clone();
        match client
            .info(request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s.into()),
        }
    }
}

impl ContentProgress for ContentClientOnSocket {
    async fn ingests(&self) -> Result<Vec<Ingest>, ProgressError> {
        let mut client = self.content.clone();
        let r = client
            .list_statuses(request(ListStatusesRequest { filters: vec![] }))
            .await?
            .into_inner();
        Ok(r.statuses
            .into_iter()
            .filter_map(|s| {
                Some(Ingest {
                    digest: ingest_digest(&s.r#ref)?.to_string(),
                    offset: u64::try_from(s.offset).unwrap_or(0),
                    total: u64::try_from(s.total).ok().filter(|&t| t > 0),
                })
            })
            .collect())
    }

    async fn manifests(
        &self,
        host: &str,
        repository: &str,
        since: SystemTime,
    ) -> Result<Vec<ManifestBlobs>, ProgressError> {
        let mut client = self.content.clone();
        // containerd's filter syntax: a quoted label key, a quoted value.
        let filter = format!("labels.\"{}\"==\"{repository}\"", source_label(host));
        let mut stream = client
            .list(request(ListContentRequest {
                filters: vec![filter],
            }))
            .await?
            .into_inner();
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut digests = Vec::new();
        while let Some(page) = stream.message().await? {
            for info in page.info {
                let recent = info.created_at.as_ref().is_some_and(|t| t.seconds >= since);
                if recent && lists_layers(&info.labels) {
                    digests.push(info.digest);
                }
            }
        }
        let mut out = Vec::new();
        for digest in digests {
            let Some(blobs) = manifest_blobs(&self.read_small(&digest).await?) else {
                continue;
            };
            let mut with_state = Vec::with_capacity(blobs.len());
            for (d, size) in blobs {
                let stored = self.stored(&d).await?;
                with_state.push((d, size, stored));
            }
            out.push(ManifestBlobs {
                digest,
                blobs: with_state,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_refs_name_their_digest() {
        let hex = "a".repeat(64);
        assert_eq!(
            ingest_digest(&format!("layer-sha256:{hex}")),
            Some(format!("sha256:{hex}").as_str())
        );
        assert_eq!(
            ingest_digest(&format!("manifest-sha256:{hex}")),
            Some(format!("sha256:{hex}").as_str())
        );
        assert_eq!(ingest_digest("layer-sha256:abc"), None);
        assert_eq!(ingest_digest("something-else"), None);
    }

    #[test]
    fn the_source_label_drops_the_port() {
        assert_eq!(
            source_label("127.0.0.1:5000"),
            "containerd.io/distribution.source.127.0.0.1"
        );
        assert_eq!(
            source_label("docker.io"),
            "containerd.io/distribution.source.docker.io"
        );
    }

    #[test]
    fn a_manifest_lists_config_then_layers_and_an_index_nothing() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":3},
            "layers":[{"digest":"sha256:l0","size":10},{"digest":"sha256:l1","size":20}]}"#;
        assert_eq!(
            manifest_blobs(m).unwrap(),
            vec![
                ("sha256:c".to_string(), 3),
                ("sha256:l0".to_string(), 10),
                ("sha256:l1".to_string(), 20)
            ]
        );
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m","size":5}]}"#;
        assert_eq!(manifest_blobs(index), None);
    }
}
