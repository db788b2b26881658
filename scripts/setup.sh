#!/usr/bin/env bash
# Bind NVMe and virtio-blk PCI functions to vfio-pci for the userspace drivers, and give them
# back; in the spirit of SPDK's scripts/setup.sh.
#
# Usage: scripts/setup.sh config|reset|status|help
#
#   config  bind NVMe (class 0x010802) and virtio-blk (1af4:1001, 1af4:1042) functions to
#           vfio-pci (all of them, or those in PCI_ALLOWED), reserve huge pages, and with
#           TARGET_USER give that user the VFIO group nodes. Refuses a function whose block
#           devices are mounted, used as swap, or held by dm/md.
#   reset   give those functions back to their kernel drivers.
#   status  table of the functions, their drivers, IOMMU groups and NUMA nodes; huge pages;
#           IOMMU mode.
#
# Environment:
#   PCI_ALLOWED="0000:00:04.0 0000:00:05.0"   only these functions (default: all found)
#   PCI_BLOCKED="..."                          never these
#   HUGEMEM=MiB        huge page memory to reserve on config (default 512; 0: leave as is)
#   CLEAR_HUGE=yes     on reset, release the huge pages too
#   TARGET_USER=name   on config, chown /dev/vfio/N to this user (and print the memlock advice)
#   NOIOMMU=yes        on config, when no IOMMU is active, turn on VFIO's unsafe no-IOMMU mode
#   DRY_RUN=yes        say what config/reset would do; change nothing
#   SYSFS_ROOT=dir     operate on a fake tree (tests): dir/sys, dir/proc, dir/dev
set -euo pipefail

ROOT="${SYSFS_ROOT:-}"
SYS="$ROOT/sys"
PCI_DEVICES="$SYS/bus/pci/devices"
PCI_DRIVERS="$SYS/bus/pci/drivers"
HUGEMEM="${HUGEMEM:-512}"

die() { echo "setup.sh: $*" >&2; exit 1; }
note() { echo "setup.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

read_attr() { # FILE -> contents without 0x, or empty
    local v=""
    if [[ -r "$1" ]]; then read -r v <"$1" || true; fi
    echo "${v#0x}"
}

link_name() { # SYMLINK -> basename of target, or empty
    local t
    t=$(readlink "$1" 2>/dev/null) || { echo ""; return 0; }
    basename "$t"
}

dev_kind() { # BDF -> nvme|virtio-blk|""
    local d="$PCI_DEVICES/$1" class vendor device
    class=$(read_attr "$d/class"); vendor=$(read_attr "$d/vendor"); device=$(read_attr "$d/device")
    if [[ "$class" == "010802" ]]; then echo nvme
    elif [[ "$vendor" == "1af4" && ( "$device" == "1001" || "$device" == "1042" ) ]]; then echo virtio-blk
    else echo ""; fi
}

in_list() { # ITEM LIST
    local x
    for x in $2; do [[ "$x" == "$1" ]] && return 0; done
    return 1
}

selected() { # BDF -> 0 if it is a storage function this run should touch
    local bdf=$1
    [[ -n "$(dev_kind "$bdf")" ]] || return 1
    if [[ -n "${PCI_ALLOWED:-}" ]] && ! in_list "$bdf" "$PCI_ALLOWED"; then return 1; fi
    if [[ -n "${PCI_BLOCKED:-}" ]] && in_list "$bdf" "$PCI_BLOCKED"; then return 1; fi
    return 0
}

functions() { # all PCI addresses, sorted
    [[ -d "$PCI_DEVICES" ]] || die "$PCI_DEVICES not found: is sysfs mounted?"
    local p
    for p in "$PCI_DEVICES"/*; do
        [[ -e "$p" ]] && basename "$p"
    done | sort
}

block_devs() { # BDF -> names of its block devices (nvme0n1, vda, ...) and their partitions
    local d="$PCI_DEVICES/$1" b
    for b in "$d"/nvme/nvme*/nvme*n* "$d"/virtio*/block/* "$d"/block/*; do
        [[ -d "$b" ]] || continue
        basename "$b"
        local p
        for p in "$b"/"$(basename "$b")"*; do
            [[ -d "$p" ]] && basename "$p"
        done
    done | sort -u
}

in_use() { # BDF -> prints why it is in use (empty if free)
    local name devno
    for name in $(block_devs "$1"); do
        devno=$(read_attr "$SYS/class/block/$name/dev")
        # By device number (mountinfo's third field): catches /dev/root and by-uuid sources.
        if [[ -n "$devno" && -r "$ROOT/proc/self/mountinfo" ]] \
            && awk -v d="$devno" '$3 == d { found = 1 } END { exit !found }' "$ROOT/proc/self/mountinfo"; then
            echo "/dev/$name is mounted"
        elif [[ -r "$ROOT/proc/mounts" ]] && awk -v d="/dev/$name" '$1 == d { found = 1 } END { exit !found }' "$ROOT/proc/mounts"; then
            echo "/dev/$name is mounted"
        fi
        if [[ -r "$ROOT/proc/swaps" ]] && awk -v d="/dev/$name" '$1 == d { found = 1 } END { exit !found }' "$ROOT/proc/swaps"; then
            echo "/dev/$name is active swap"
        fi
        local h="$SYS/class/block/$name/holders"
        if [[ -d "$h" ]] && [[ -n "$(ls -A "$h" 2>/dev/null)" ]]; then
            echo "/dev/$name is held by $(cd "$h" && printf '%s ' *)(dm/md/LVM)"
        fi
    done
}

write_attr() { # VALUE FILE
    if [[ "${DRY_RUN:-}" == yes ]]; then
        echo "would write '$1' to $2"
        return 0
    fi
    printf '%s' "$1" >"$2" 2>/dev/null || die "cannot write '$1' to $2 (root needed?)"
}

bind_vfio() { # BDF
    local bdf=$1 d="$PCI_DEVICES/$1" drv
    drv=$(link_name "$d/driver")
    if [[ "$drv" == vfio-pci ]]; then
        echo "$bdf ($(dev_kind "$bdf")): already on vfio-pci"
        return 0
    fi
    write_attr vfio-pci "$d/driver_override"
    if [[ -n "$drv" ]]; then
        write_attr "$bdf" "$PCI_DRIVERS/$drv/unbind"
    fi
    write_attr "$bdf" "$SYS/bus/pci/drivers_probe"
    [[ "${DRY_RUN:-}" != yes ]] || return 0
    local now
    now=$(link_name "$d/driver")
    if [[ "$now" != vfio-pci ]]; then
        note "$bdf: did not bind to vfio-pci (driver now: ${now:-none}); see dmesg"
        return 1
    fi
    echo "$bdf ($(dev_kind "$bdf")): ${drv:-no driver} -> vfio-pci"
}

unbind_vfio() { # BDF
    local bdf=$1 d="$PCI_DEVICES/$1" drv
    drv=$(link_name "$d/driver")
    # A lone newline clears driver_override.
    write_attr $'\n' "$d/driver_override"
    if [[ "$drv" == vfio-pci ]]; then
        write_attr "$bdf" "$PCI_DRIVERS/vfio-pci/unbind"
    fi
    write_attr "$bdf" "$SYS/bus/pci/drivers_probe"
    echo "$bdf ($(dev_kind "$bdf")): ${drv:-no driver} -> $(link_name "$d/driver" | sed 's/^$/no driver/')"
}

iommu_active() {
    [[ -d "$SYS/class/iommu" ]] && [[ -n "$(ls -A "$SYS/class/iommu" 2>/dev/null)" ]]
}

noiommu_on() {
    local v
    v=$(read_attr "$SYS/module/vfio/parameters/enable_unsafe_noiommu_mode")
    [[ "$v" == Y || "$v" == 1 ]]
}

reserve_hugepages() {
    [[ "$HUGEMEM" =~ ^[0-9]+$ ]] || die "HUGEMEM=$HUGEMEM: expected MiB as a number"
    [[ "$HUGEMEM" -gt 0 ]] || return 0
    local f="$ROOT/proc/sys/vm/nr_hugepages" want have
    want=$(( (HUGEMEM + 1) / 2 ))
    have=$(read_attr "$f")
    if [[ -n "$have" && "$have" -ge "$want" ]]; then
        echo "huge pages: $have x 2 MiB reserved (enough for HUGEMEM=$HUGEMEM)"
        return 0
    fi
    write_attr "$want" "$f"
    have=$(read_attr "$f")
    if [[ "$have" -lt "$want" ]]; then
        note "only $have of $want huge pages could be reserved (memory fragmented?); DMA falls back to locked 4 KiB pages"
    else
        echo "huge pages: $have x 2 MiB reserved"
    fi
}

cmd_config() {
    if [[ -z "$ROOT" && "${DRY_RUN:-}" != yes ]]; then
        modprobe vfio-pci 2>/dev/null || true
    fi
    if ! iommu_active && ! noiommu_on; then
        if [[ "${NOIOMMU:-}" == yes ]]; then
            note "no IOMMU: turning on VFIO's unsafe no-IOMMU mode (devices can reach all memory)"
            write_attr Y "$SYS/module/vfio/parameters/enable_unsafe_noiommu_mode"
        else
            note "warning: no IOMMU is active and no-IOMMU mode is off: VFIO will not open the devices."
            note "  boot with intel_iommu=on (amd_iommu=on), or rerun with NOIOMMU=yes (unsafe: no DMA protection)"
        fi
    fi
    if [[ ! -d "$PCI_DRIVERS/vfio-pci" ]]; then
        [[ "${DRY_RUN:-}" == yes ]] || die "the vfio-pci driver is not loaded: modprobe vfio-pci"
        note "(dry run) the vfio-pci driver is not loaded"
    fi
    local bdf found=0 failed=0 why
    for bdf in $(functions); do
        selected "$bdf" || continue
        found=1
        why=$(in_use "$bdf")
        if [[ -n "$why" ]]; then
            note "$bdf ($(dev_kind "$bdf")): refusing, it is in use: $(echo "$why" | paste -sd ';' -)"
            failed=1
            continue
        fi
        bind_vfio "$bdf" || failed=1
    done
    [[ "$found" == 1 ]] || note "no NVMe or virtio-blk function found${PCI_ALLOWED:+ in PCI_ALLOWED=$PCI_ALLOWED}"
    reserve_hugepages
    if [[ -n "${TARGET_USER:-}" ]]; then
        id "$TARGET_USER" >/dev/null 2>&1 || [[ -n "$ROOT" ]] || die "TARGET_USER=$TARGET_USER: no such user"
        local n
        for bdf in $(functions); do
            selected "$bdf" || continue
            n=$(link_name "$PCI_DEVICES/$bdf/iommu_group")
            [[ -n "$n" ]] || continue
            for node in "$ROOT/dev/vfio/$n" "$ROOT/dev/vfio/noiommu-$n"; do
                if [[ -e "$node" && "${DRY_RUN:-}" == yes ]]; then
                    echo "would chown $node to $TARGET_USER"
                elif [[ -e "$node" ]]; then
                    chown "$TARGET_USER" "$node" || die "cannot chown $node"
                    echo "$node: owner $TARGET_USER"
                fi
            done
        done
        echo "note: $TARGET_USER also needs a memlock limit as large as the DMA memory it maps"
        echo "      (e.g. '$TARGET_USER - memlock unlimited' in /etc/security/limits.d/mfio.conf);"
        echo "      no-IOMMU mode needs root (CAP_SYS_RAWIO, CAP_SYS_ADMIN) whatever the owner."
    fi
    return "$failed"
}

cmd_reset() {
    local bdf failed=0
    for bdf in $(functions); do
        selected "$bdf" || continue
        [[ "$(link_name "$PCI_DEVICES/$bdf/driver")" == vfio-pci ]] || continue
        unbind_vfio "$bdf" || failed=1
    done
    if [[ "${CLEAR_HUGE:-}" == yes ]]; then
        write_attr 0 "$ROOT/proc/sys/vm/nr_hugepages"
        echo "huge pages released"
    fi
    return "$failed"
}

cmd_status() {
    local bdf kind d drv grp numa peers blk
    printf '%-13s %-10s %-9s %-10s %-6s %-5s %-14s %s\n' BDF VENDOR:DEV TYPE DRIVER GROUP NUMA GROUP-PEERS BLOCK
    for bdf in $(functions); do
        kind=$(dev_kind "$bdf")
        [[ -n "$kind" ]] || continue
        d="$PCI_DEVICES/$bdf"
        drv=$(link_name "$d/driver")
        grp=$(link_name "$d/iommu_group")
        numa=$(read_attr "$d/numa_node")
        peers=""
        if [[ -n "$grp" && -d "$SYS/kernel/iommu_groups/$grp/devices" ]]; then
            local m
            for m in "$SYS/kernel/iommu_groups/$grp/devices"/*; do
                if [[ -e "$m" && "$(basename "$m")" != "$bdf" ]]; then
                    peers="${peers:+$peers,}$(basename "$m")"
                fi
            done
        fi
        blk=$(block_devs "$bdf" | paste -sd, - || true)
        printf '%-13s %-10s %-9s %-10s %-6s %-5s %-14s %s\n' "$bdf" \
            "$(read_attr "$d/vendor"):$(read_attr "$d/device")" "$kind" "${drv:--}" "${grp:--}" \
            "${numa:--}" "${peers:--}" "${blk:--}"
    done
    local total free
    total=$(awk '/^HugePages_Total/ { print $2 }' "$ROOT/proc/meminfo" 2>/dev/null || true)
    free=$(awk '/^HugePages_Free/ { print $2 }' "$ROOT/proc/meminfo" 2>/dev/null || true)
    echo "huge pages (2 MiB): total ${total:-?}, free ${free:-?}"
    if iommu_active; then echo "IOMMU: active (VFIO type1)"
    elif noiommu_on; then echo "IOMMU: none; VFIO no-IOMMU mode on (unsafe)"
    else echo "IOMMU: none, and VFIO no-IOMMU mode off (VFIO cannot open devices)"; fi
}

case "${1:-}" in
    config) cmd_config ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 1 ;;
    *) echo "setup.sh: unknown command '$1'" >&2; usage >&2; exit 1 ;;
esac
