//! Guest-side test programs run inside QEMU against real devices bound to vfio-pci.
