//! PCI devices for userspace drivers: the PciDevice trait, VFIO, sysfs.
