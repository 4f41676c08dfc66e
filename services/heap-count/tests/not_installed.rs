//! A binary that uses the counts without installing the allocator gets a panic, not a heap
//! of 0 bytes that every bound accepts.

#[test]
#[should_panic(expected = "nothing counted")]
fn held_bytes_refuses_to_answer_without_the_allocator() {
    let _ = keel_heap_count::held_bytes();
}

#[test]
#[should_panic(expected = "nothing counted")]
fn freed_by_refuses_to_answer_without_the_allocator() {
    let _ = keel_heap_count::freed_by(|| drop(vec![0u8; 64]));
}
