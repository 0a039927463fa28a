//! Image references, parsed and normalized as the kubelet and containerd do.
