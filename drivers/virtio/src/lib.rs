//! Userspace virtio-blk driver over VFIO (arrives with the virtio-blk driver issue).
