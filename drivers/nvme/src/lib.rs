//! Userspace NVMe driver over VFIO (arrives with the NVMe driver issue).
