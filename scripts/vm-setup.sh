#!/bin/bash
# Prepare everything the QEMU test guest needs, idempotently:
#   - host packages (QEMU, busybox-static, kmod, cpio, ...), installed with apt-get if missing;
#   - Debian's guest kernel, downloaded with `apt-get download` and unpacked into the cache
#     (never installed on the host), plus an uncompressed vmlinux that QEMU boots faster;
#   - Debian's VFIO modules rebuilt out of tree with CONFIG_VFIO_NOIOMMU (Debian ships it off);
#   - the initramfs (busybox, the needed modules, vm-tests/guest/init).
# Everything lands in $VMKIT (default ~/.cache/mfio-vmkit), keyed by kernel version and by a
# hash of the guest assets, so a re-run with nothing to do takes about a second.
#
# Usage: scripts/vm-setup.sh [--no-install] [--quiet]
#   --no-install  never call apt-get install (fail with the missing package's name instead)
#   --quiet       print only errors and the final line
# Prints the cache directory as its last line: "vm-setup: ready in $VMKIT (kernel KVER)".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
GUEST="$ROOT/vm-tests/guest"
VMKIT=${VMKIT:-$HOME/.cache/mfio-vmkit}
INSTALL=1
QUIET=0
for a in "$@"; do
  case "$a" in
    --no-install) INSTALL=0 ;;
    --quiet) QUIET=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "vm-setup: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { [ "$QUIET" = 1 ] || echo "vm-setup: $*"; }
die() { echo "vm-setup: ERROR: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed (is a Debian mirror reachable?)"
    APT_UPDATED=1
  fi
}
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: run as root to install packages"
  SUDO=(sudo)
fi

# ---- 1. host packages --------------------------------------------------------------------
# command -> package. gcc/make/bc/libc6-dev build the no-IOMMU VFIO modules; xz unpacks the
# kernel payload and the linux-source tarball.
need_pkgs=()
check() { # check CMD-OR-FILE PACKAGE
  if [[ "$1" == /* ]]; then [ -e "$1" ] || need_pkgs+=("$2")
  else command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); fi
}
check qemu-system-x86_64 qemu-system-x86
check cpio cpio
check depmod kmod
check lspci pciutils
check xz xz-utils
check gcc gcc
check make make
check bc bc
check /usr/include/stdio.h libc6-dev
check timeout coreutils
check flock util-linux
check jq jq # scripts/vm-tests.sh reads `cargo metadata`
# guest-nbd runs the host's nbd-client, mkfs.ext4 and blkdiscard in the guest (chroot /host).
check nbd-client nbd-client
check mkfs.ext4 e2fsprogs
check blkdiscard util-linux
# Installing Debian's qemu-system-x86 replaces a newer qemu-utils on some images: put qemu-img
# back (the benchmarks use `qemu-img bench` on nvme://).
check qemu-img qemu-utils
check_pkg() { # check_pkg PACKAGE: by its dpkg status (libraries have no command to look for)
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$1")
}
# busybox-static, not the dynamic busybox: the initramfs has no libc.
check_pkg busybox-static
# linux-kbuild's tools (modpost, ...) are unpacked, not installed: their libraries are not
# pulled in by apt, so ask for them here.
check_pkg libelf1
check_pkg libssl3
check_pkg zlib1g
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: ${need_pkgs[*]} (apt-get install them, or drop --no-install)"
  say "installing ${need_pkgs[*]}"
  apt_update_once
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
    die "apt-get install ${need_pkgs[*]} failed"
  # qemu-system-x86 may have removed qemu-utils while being installed: check again.
  command -v qemu-img >/dev/null ||
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends qemu-utils >/dev/null ||
    die "apt-get install qemu-utils failed"
fi

mkdir -p "$VMKIT"
VMKIT=$(cd "$VMKIT" && pwd)
# One setup at a time per cache (vm-run.sh calls us; several may start together).
exec 9>"$VMKIT/.setup.lock"
flock 9

# ---- 2. guest kernel ---------------------------------------------------------------------
# The concrete package behind the linux-image-amd64 metapackage, e.g. linux-image-6.1.0-56-amd64.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
PKG=${VM_KERNEL_PKG:-$(kernel_pkg)}
if [ -z "$PKG" ]; then
  apt_update_once
  PKG=$(kernel_pkg)
fi
[ -n "$PKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends linux-image-amd64)"
KV=${PKG#linux-image-}
KDIR="$VMKIT/$KV"
DEBS="$VMKIT/debs"
mkdir -p "$KDIR" "$DEBS"

# download PKG...: apt-get download into $DEBS, once; the error names the package.
download() {
  local p missing=()
  for p in "$@"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  say "downloading ${missing[*]}"
  for p in "${missing[@]}"; do
    if ! (cd "$DEBS" && apt-get download -q "$p" >/dev/null 2>"$DEBS/.err"); then
      apt_update_once # stale lists are the usual reason: retry once with fresh ones
      (cd "$DEBS" && apt-get download -q "$p" >/dev/null 2>"$DEBS/.err") ||
        die "cannot download Debian package '$p': $(tail -n 2 "$DEBS/.err" | tr '\n' ' ')"
    fi
  done
}

if [ ! -f "$KDIR/kernel/boot/vmlinuz-$KV" ]; then
  download "$PKG"
  rm -rf "$KDIR/kernel.tmp"
  dpkg -x "$DEBS/${PKG}"_*.deb "$KDIR/kernel.tmp"
  # The .deb ships no modules.dep (the postinst makes it): build it for the unpacked tree.
  depmod -b "$KDIR/kernel.tmp" "$KV"
  mv "$KDIR/kernel.tmp" "$KDIR/kernel"
fi

# Uncompressed vmlinux: it carries a PVH ELF note, so QEMU boots it directly, 2 to 3 s faster
# under TCG than decompressing the bzImage in the guest. Fall back to the bzImage if this fails.
if [ ! -f "$KDIR/vmlinux" ]; then
  bz="$KDIR/kernel/boot/vmlinuz-$KV"
  # LC_ALL=C: in a UTF-8 locale grep -P reads \xfd as a character, not a byte.
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n 1 | cut -d: -f1 || true)
  # xz stops reading at the end of the stream: tail's SIGPIPE is expected, only xz's status counts.
  if [ -n "$off" ] && { tail -c +"$((off + 1))" "$bz" || true; } | xz -dc --single-stream >"$KDIR/vmlinux.tmp" &&
    [ "$(head -c 4 "$KDIR/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
  else
    rm -f "$KDIR/vmlinux.tmp"
    say "could not extract an uncompressed vmlinux; booting the bzImage (slower)"
    cp "$bz" "$KDIR/vmlinux"
  fi
fi

# ---- 3. VFIO modules with CONFIG_VFIO_NOIOMMU ----------------------------------------------
if [ ! -f "$KDIR/vfio-noiommu/.done" ]; then
  SRCVER=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$KV") # 6.1
  COMMON=${KV%-amd64}-common                           # 6.1.0-56-common
  download "linux-source-$SRCVER" "linux-headers-$KV" "linux-headers-$COMMON" "linux-kbuild-$SRCVER"
  say "building the no-IOMMU VFIO modules (about 10 s)"
  KV=$KV KDIR=$KDIR DEBS=$DEBS "$GUEST/build-vfio-noiommu.sh" >"$KDIR/vfio-noiommu.log" 2>&1 ||
    die "building the no-IOMMU VFIO modules failed; see $KDIR/vfio-noiommu.log"
  touch "$KDIR/vfio-noiommu/.done"
fi

# ---- 4. initramfs ------------------------------------------------------------------------
# Rebuilt whenever the guest assets, busybox or the kernel change.
KEY=$( (
  echo "$KV"
  cat "$GUEST/init" "$GUEST/build-initramfs.sh"
  cksum </bin/busybox
  cksum <"$KDIR/vfio-noiommu/vfio.ko"
) | sha256sum | cut -c1-16)
if [ ! -f "$KDIR/initramfs-$KEY.cpio.gz" ]; then
  say "building the initramfs"
  OUTTMP="$KDIR/initramfs-$KEY.cpio.gz.tmp"
  KV=$KV KDIR=$KDIR "$GUEST/build-initramfs.sh" "$OUTTMP" >"$KDIR/initramfs.log" 2>&1 ||
    die "building the initramfs failed; see $KDIR/initramfs.log"
  mv "$OUTTMP" "$KDIR/initramfs-$KEY.cpio.gz"
  # keep only the current one
  find "$KDIR" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "initramfs-$KEY.cpio.gz" -delete
fi

# What vm-run.sh boots: stable names, replaced atomically.
ln -sfn "$KDIR/vmlinux" "$VMKIT/vmlinux.tmp" && mv -T "$VMKIT/vmlinux.tmp" "$VMKIT/vmlinux"
ln -sfn "$KDIR/initramfs-$KEY.cpio.gz" "$VMKIT/initramfs.tmp" && mv -T "$VMKIT/initramfs.tmp" "$VMKIT/initramfs.cpio.gz"
echo "$KV" >"$VMKIT/kernel-version"
echo "vm-setup: ready in $VMKIT (kernel $KV)"
