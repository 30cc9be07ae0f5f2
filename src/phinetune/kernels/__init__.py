"""CPU kernels and the allocator setting that training on CPU runs on: packed-row attention, the fused RMSNorm,
LoRA's dropout and scale-and-add, and glibc's mmap threshold. Each replaces a library's op with one that computes
the same thing (its test compares the two) and depends on torch and peft only; models/ and train/ install them."""
