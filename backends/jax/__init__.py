"""The JAX backend: D2L's dropout MLP in JAX + Flax (linen) + Optax, as the section's JAX tab writes it.

- ``model``: the section's ``dropout_layer`` (its key passed in), ``DropoutMLP`` (concise: ``nn.Dense`` + relu +
  ``nn.Dropout``) and ``DropoutMLPScratch`` (the section's ``dropout_layer``), the other noise kinds and injected
  draws; and the bound on XLA's CPU threads, applied before jax is imported;
- ``backend``: the contract, stock tier: Flax layers, ``optax.sgd`` (weight decay by ``optax.add_decayed_weights``
  on the kernels), one ``jax.jit`` step per batch (eager) or that step under ``lax.scan`` over the epoch (compiled);
- ``tuned``: the tuned tier, speed paths of the same law (fewer random bits per mask, the Dense kernel gradient as
  a plain dot on the CPU, the epoch gathered on the device, donated buffers);
- ``probes``: the bench's instrumentation (GEMM library, the step's products, the dropout noise), by tier and mode.
"""
