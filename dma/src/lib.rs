//! Memory a device can reach: DMA regions, IOVA allocation, mappers, translation, pools.
