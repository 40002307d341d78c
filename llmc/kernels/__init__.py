"""llmc's own TIR kernels and the compiler-side step that picks them by target (``dispatch``).

Models (``llmc.models``) never choose kernels: they export target-free Relax (a paged-KV-cache request,
plain SiLU); ``dispatch.dispatch_kernels`` swaps in the kernels a target runs:

* ``cpu_attention``: parallel, vectorized attention and RoPE for TVM's paged KV cache on CPUs (sliding
  windows, soft-capping, evicting caches);
* ``gpu_softcap``: Gemma 2's attention soft-capping patched into TVM's GPU attention kernels;
* ``cpu_silu``: a libm-free SiLU-times-up kernel for CPUs;
* ``moe_sort``: the expert-major sort of MoE assignments that grouped expert matmuls read.
"""
