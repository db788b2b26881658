//! One block-device conformance suite, generic over any mfio PacketIo backend.
