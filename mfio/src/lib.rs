//! mfio: a packet-based async I/O framework (work in progress).
#![no_std]
