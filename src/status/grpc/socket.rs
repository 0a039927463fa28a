//! The socket file of the gRPC API: created private, a stale one replaced, removed on exit
//! unless another agent has taken the path over meanwhile.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use super::GrpcServeError;

/// (device, inode) of the socket file this agent bound.
pub(super) type SocketIdentity = (u64, u64);

pub(super) fn bind(path: &Path) -> Result<(UnixListener, SocketIdentity), GrpcServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // 0700 when we create it: nobody else can reach the socket even before the chmod.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| GrpcServeError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // Left by a crashed agent, or by the one this pod replaces (which then leaves ours
            // alone: see `remove_if_ours`).
            tracing::info!(socket = %path.display(), "replacing an existing socket file");
            std::fs::remove_file(path).map_err(|source| GrpcServeError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(GrpcServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GrpcServeError::RemoveStale {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| GrpcServeError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let restrict = || -> io::Result<SocketIdentity> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let m = std::fs::symlink_metadata(path)?;
        Ok((m.dev(), m.ino()))
    };
    match restrict() {
        Ok(identity) => Ok((listener, identity)),
        Err(source) => {
            let _ = std::fs::remove_file(path);
            Err(GrpcServeError::Chmod {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// Removes the socket file unless another agent has replaced it meanwhile (a rolling update
/// may start the new pod before the old one has stopped).
pub(super) fn remove_if_ours(path: &Path, identity: SocketIdentity) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == identity => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), "cannot remove the socket file: {e}");
            }
        }
        Ok(_) => tracing::info!(
            socket = %path.display(),
            "socket file replaced by another agent; leaving it"
        ),
        Err(_) => {}
    }
}
