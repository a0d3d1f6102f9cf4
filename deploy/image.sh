#!/usr/bin/env bash
# Builds deploy/Dockerfile's image with buildah (no daemon, no Docker Hub): `make image` runs `deploy/image.sh build`.
#
#   deploy/image.sh base    the Debian bookworm base: debootstrap (variant minbase) from the mirror this machine's apt
#                           sources name, slimmed as Debian's -slim images are, imported into buildah's storage under
#                           the name the Dockerfile's base has (BASE_NAME, without the digest). Made once, then reused.
#   deploy/image.sh build   base, then the image (IMAGE, default saga-coordinator:0.1.0) from the Dockerfile with
#                           BASE=$BASE_NAME, never pulled. Prints its size and the build's time.
#
# Everything lives under build/image (gitignored): the root filesystem's tarball and buildah's own storage (vfs: no
# kernel mounts, so nothing can be left mounted). `rm -rf build/image` starts afresh. Needs root (debootstrap, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-saga-coordinator:0.1.0}
BASE_NAME=${BASE_NAME:-docker.io/library/debian:bookworm-slim}
SUITE=bookworm
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
WORK=${SAGA_IMAGE_DIR:-$PWD/build/image}
# --root/--runroot: buildah's storage is the project's, not the machine's; vfs needs no overlay support.
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)

# The Debian mirror of this machine's apt sources (deb822 .sources or one-line .list), the archive of the distribution
# itself (not -security): debootstrap fetches from where apt does.
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' |
        grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
            grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)
    fi
    [ -n "$uri" ] || { echo "image.sh: no Debian mirror in /etc/apt/sources.list*" >&2; return 1; }
    echo "${uri%/}"
}

base() {
    if "${BUILDAH[@]}" inspect --type image "$BASE_NAME" >/dev/null 2>&1; then
        echo "base image $BASE_NAME: present (rm -rf $WORK to remake it)"
        return 0
    fi
    local start=$SECONDS mirror tarball=$WORK/$SUITE-slim.tar rootfs=$WORK/rootfs
    mirror=$(debian_mirror)
    mkdir -p "$WORK"
    if [ ! -s "$tarball" ]; then
        echo "debootstrap $SUITE (minbase) from $mirror ..."
        # A mirror's download sometimes fails half-way (debootstrap does not retry): up to three attempts.
        local attempt
        for attempt in 1 2 3; do
            rm -rf "$rootfs"
            debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 && break
            tail -n 5 "$WORK/debootstrap.log" >&2
            [ "$attempt" -lt 3 ] || { rm -rf "$rootfs"; return 1; }
            echo "debootstrap failed (attempt $attempt), again in 10 s" >&2
            sleep 10
        done
        slim "$rootfs" "$mirror"
        tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    local ctr
    ctr=$("${BUILDAH[@]}" from scratch)
    # buildah add unpacks a local tarball at the destination.
    "${BUILDAH[@]}" add "$ctr" "$tarball" / >/dev/null
    "${BUILDAH[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    "${BUILDAH[@]}" commit -q "$ctr" "$BASE_NAME" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    echo "base image $BASE_NAME made in $((SECONDS - start)) s"
}

# What Debian's docker images do to a debootstrap (debuerreotype's slimify and minimizing-docker): no documentation,
# manual pages or translations, now or from later apt-get installs; no package lists or caches; apt sources as this
# machine's (the same mirror, with updates and security where it has them).
slim() {
    local rootfs=$1 mirror=$2 security
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
        "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    security=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -E '^(URIs:|deb )' |
        grep -o 'http[^ ]*debian-security' | head -n1 || true)
    rm -f "$rootfs/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$SUITE" "$SUITE"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        if [ -n "$security" ]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$SUITE"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        fi
    } >"$rootfs/etc/apt/sources.list.d/debian.sources"
}

build() {
    base
    local start=$SECONDS
    # Working containers a failed build left behind (buildah keeps them for inspection): this storage is ours alone.
    "${BUILDAH[@]}" rm --all >/dev/null
    # --pull=never: the base is the one in this storage, under the Dockerfile's name; nothing comes from a registry.
    # --isolation chroot: RUN steps need no daemon, no user namespaces and share the host's network (the Debian
    # mirror). --layers: unchanged steps (the apt and pip installs) are reused by the next build.
    # pip (the lock's wheels) trusts the CA bundle this machine trusts, mounted for the RUN steps only: CI machines
    # reach PyPI through a TLS-inspecting proxy whose CA is in that bundle, not in pip's own.
    local ca_args=()
    if [ -s "$HOST_CA" ]; then
        ca_args=(--volume "$HOST_CA:/run/build-ca/ca.crt:ro" --build-arg BUILD_CA=/run/build-ca/ca.crt)
    fi
    "${BUILDAH[@]}" bud -q --isolation chroot --layers --pull=never --build-arg "BASE=$BASE_NAME" "${ca_args[@]}" \
        -f deploy/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; return 1; }
    local size
    size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -n1)
    echo "image $IMAGE built in $((SECONDS - start)) s: $size"
}

case "${1:-}" in
base) base ;;
build) build ;;
buildah) shift; "${BUILDAH[@]}" "$@" ;; # the same storage, for the smoke test and by hand: image.sh buildah images
*)
    echo "usage: deploy/image.sh base|build|buildah ARGS..." >&2
    exit 2
    ;;
esac
