# Sourced by bench-guest.sh and bench-diag.sh (in the guest): moving a PCI function between
# the kernel's drivers and vfio-pci, and finding the kernel's disk on it. Callers define log().

# bind ADDR DRIVER: moves the function to DRIVER (vfio-pci, nvme or virtio-pci); driver_override
# makes drivers_probe pick exactly that one.
bind() {
  local a=$1 drv=$2 d=/sys/bus/pci/devices/$1 now=none
  [ -e "$d/driver" ] && now=$(basename "$(readlink "$d/driver")")
  [ "$now" = "$drv" ] && return 0
  echo "$drv" >"$d/driver_override"
  [ -e "$d/driver" ] && echo "$a" >"$d/driver/unbind"
  echo "$a" >/sys/bus/pci/drivers_probe
  now=none
  [ -e "$d/driver" ] && now=$(basename "$(readlink "$d/driver")")
  [ "$now" = "$drv" ] || { log "binding $a to $drv failed (now: $now)"; return 1; }
}
# rebind ADDR DRIVER: unbinds first, so that changed module parameters (poll_queues) apply.
rebind() {
  local d=/sys/bus/pci/devices/$1
  [ -e "$d/driver" ] && echo "$1" >"$d/driver/unbind"
  bind "$1" "$2"
}
# blockdev ADDR: /dev path of the kernel's disk on that function (namespace 1 for NVMe); waits
# for udev-less devtmpfs to show it.
blockdev() {
  local _ b
  for _ in $(seq 50); do
    b=$(find "/sys/bus/pci/devices/$1/" -maxdepth 4 \( -name 'nvme*n1' -o -name 'vd*' \) 2>/dev/null | head -n 1)
    if [ -n "$b" ] && [ -b "/dev/${b##*/}" ]; then echo "/dev/${b##*/}"; return 0; fi
    sleep 0.1
  done
  return 1
}
