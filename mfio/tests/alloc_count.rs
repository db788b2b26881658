//! The counting allocator counts (the zero-allocation checks that use it would pass vacuously
//! otherwise).

#[global_allocator]
static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;

#[test]
fn allocations_and_reallocations_are_counted_and_frees_are_not() {
    let before = mfio::alloc_count::allocations();
    let mut v: Vec<u8> = Vec::with_capacity(16);
    v.extend_from_slice(&[1; 16]);
    let after_alloc = mfio::alloc_count::allocations();
    v.reserve_exact(4096); // a reallocation
    let after_realloc = mfio::alloc_count::allocations();
    drop(std::hint::black_box(v));
    let after_free = mfio::alloc_count::allocations();
    assert!(after_alloc > before);
    assert!(after_realloc > after_alloc);
    assert_eq!(after_free, after_realloc);
    let z = std::hint::black_box(vec![0u8; 1 << 20]); // alloc_zeroed
    assert!(mfio::alloc_count::allocations() > after_free);
    drop(z);
}
