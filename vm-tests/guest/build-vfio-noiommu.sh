#!/bin/bash
# Rebuild the guest kernel's VFIO modules out of tree with CONFIG_VFIO_NOIOMMU=1: Debian ships
# it disabled, so the stock vfio.ko has no enable_unsafe_noiommu_mode parameter.
# Called by scripts/vm-setup.sh with KV (6.1.0-56-amd64), KDIR (per-kernel cache dir) and DEBS
# (holding linux-source-6.1, linux-headers-KV, linux-headers-*-common, linux-kbuild-6.1 .debs,
# unpacked here, never installed). Output: $KDIR/vfio-noiommu/{vfio,...}.ko and pci/*.ko.
set -euo pipefail
: "${KV:?}" "${KDIR:?}" "${DEBS:?}"
SRCVER=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$KV")
KB="$KDIR/kbuild"
H="$KB/usr/src/linux-headers-$KV"

if [ ! -f "$H/Module.symvers" ]; then
  rm -rf "$KB"; mkdir -p "$KB"
  for d in "$DEBS/linux-headers-${KV}"_*.deb "$DEBS/linux-headers-${KV%-amd64}-common"_*.deb \
    "$DEBS/linux-kbuild-${SRCVER}"_*.deb; do
    dpkg -x "$d" "$KB"
  done
fi
# The arch headers' Makefile includes the -common tree by its absolute /usr/src path: point it
# at the unpacked copy instead.
sed -i "s#^include /usr/src/#include $KB/usr/src/#" "$H/Makefile"

SRC="$KDIR/src/linux-source-$SRCVER"
if [ ! -d "$SRC/drivers/vfio" ]; then
  mkdir -p "$KDIR/src"
  # Only drivers/vfio out of the ~140 MB tarball.
  dpkg-deb --fsys-tarfile "$DEBS/linux-source-${SRCVER}"_*.deb |
    tar -xO "./usr/src/linux-source-$SRCVER.tar.xz" |
    tar -C "$KDIR/src" -xJf - "linux-source-$SRCVER/drivers/vfio"
fi

S="$SRC/drivers/vfio"
O="$KDIR/vfio-noiommu"
rm -rf "$O"; mkdir -p "$O/pci"
cp "$S"/*.c "$S"/*.h "$O/"
cp "$S"/pci/*.c "$S"/pci/*.h "$O/pci/"
# Other architectures' and platforms' files do not build here and are not needed.
rm -f "$O/vfio_iommu_spapr_tce.c" "$O/vfio_spapr_eeh.c" "$O/pci/vfio_pci_zdev.c"
cat >"$O/Kbuild" <<'K'
ccflags-y += -DCONFIG_VFIO_NOIOMMU=1
obj-m += vfio.o vfio_virqfd.o vfio_iommu_type1.o pci/
vfio-y := vfio_main.o iova_bitmap.o container.o
vfio_virqfd-y := virqfd.o
K
cat >"$O/pci/Kbuild" <<'K'
ccflags-y += -DCONFIG_VFIO_NOIOMMU=1
vfio-pci-core-y := vfio_pci_core.o vfio_pci_intrs.o vfio_pci_rdwr.o vfio_pci_config.o
vfio-pci-y := vfio_pci.o vfio_pci_igd.o
obj-m += vfio-pci-core.o vfio-pci.o
K
make -C "$H" M="$O" modules -j"$(nproc)"
find "$O" -name '*.ko' -exec strip --strip-debug {} +
# Proof that the parameter is there.
modinfo -F parm "$O/vfio.ko" | grep -q enable_unsafe_noiommu_mode
