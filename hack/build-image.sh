#!/usr/bin/env bash
# `make image`: assembles prepuller's container image without Docker, from the locally built
# release binary, into an OCI image layout (umoci), plus an oci-archive tarball (skopeo).
#
# The result has what the Dockerfile's distroless cc image has for this binary: the binary at
# /usr/local/bin/prepuller, the shared libraries `ldd` names (glibc, libgcc_s) at their paths,
# CA certificates, /etc/passwd and /etc/group with root and nonroot, a /tmp; the same entrypoint,
# cmd, user, exposed port and OCI labels. hack/check-image.py checks both against each other.
#
#   hack/build-image.sh BINARY OUTDIR
# writes OUTDIR/oci (layout, tag = Cargo.toml's version) and OUTDIR/prepuller-VERSION.oci.tar.
set -euo pipefail

binary=${1:?usage: build-image.sh BINARY OUTDIR}
out=${2:?usage: build-image.sh BINARY OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
# Reproducible: the commit's time, not now (SOURCE_DATE_EPOCH wins when set).
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
description=$(sed -n 's/^description *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
license=$(sed -n 's/^license *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)

[ -x "$binary" ] || { echo "build-image: $binary is not an executable (cargo build --release first)" >&2; exit 1; }

rm -rf "$out/oci" "$out/bundle"
mkdir -p "$out"
layout="$out/oci"
image="$layout:$version"

umoci init --layout "$layout"
umoci new --image "$image"
umoci unpack --image "$image" "$out/bundle" >/dev/null
rootfs="$out/bundle/rootfs"

install -D -m 0755 "$binary" "$rootfs/usr/local/bin/prepuller"
# Every shared library the binary loads, and the dynamic loader, at the paths ldd reports.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
	install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
# The rest of what distroless provides that a program may look for.
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
	| install -D -m 0644 /dev/stdin "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' | install -D -m 0644 /dev/stdin "$rootfs/etc/group"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 "$rootfs/root"
# One timestamp for every file, for a reproducible layer.
find "$rootfs" -exec touch -h -d "@$epoch" {} +

umoci repack --image "$image" --history.created "$created" --history.created_by "make image (hack/build-image.sh)" "$out/bundle" >/dev/null
umoci config --image "$image" \
	--history.created "$created" --history.created_by "make image: config" \
	--created "$created" \
	--author "" \
	--config.entrypoint /usr/local/bin/prepuller \
	--config.cmd agent --config.cmd --config --config.cmd /etc/prepuller/config \
	--config.user 0:0 \
	--config.workingdir / \
	--config.exposedports 8080/tcp \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	--config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
	--config.label "org.opencontainers.image.title=prepuller" \
	--config.label "org.opencontainers.image.description=$description" \
	--config.label "org.opencontainers.image.version=$version" \
	--config.label "org.opencontainers.image.revision=$revision" \
	--config.label "org.opencontainers.image.created=$created" \
	--config.label "org.opencontainers.image.licenses=$license" \
	--manifest.annotation "org.opencontainers.image.version=$version" \
	--manifest.annotation "org.opencontainers.image.revision=$revision" \
	--manifest.annotation "org.opencontainers.image.created=$created"
umoci gc --layout "$layout"
rm -rf "$out/bundle"

archive="$out/prepuller-$version.oci.tar"
rm -f "$archive"
skopeo copy --quiet "oci:$image" "oci-archive:$archive:prepuller:$version"
echo "image: $image ($(du -sh "$layout" | cut -f1)), archive: $archive"
