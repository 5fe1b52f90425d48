"""The NumPy backend: D2L's dropout MLP in NumPy with hand-written backpropagation, the reference every framework is
checked against (its float64 copy, ``backend.Oracle``, is the parity ladder's oracle).

- ``model``: the section's ``dropout_layer`` and the MLP (``DropoutMLP`` and ``DropoutMLPScratch``, one code in
  NumPy), its forward and backward passes and the other noise kinds;
- ``backend``: the contract, stock tier (``Backend``: the section's maths in plain NumPy ops), and ``Oracle``;
- ``tuned``: the tuned tier (``Backend``: the fused step over kept buffers, direct CBLAS calls, bit masks, the byte
  gather, in-place activations);
- ``probes``: the bench's instrumentation of either tier (GEMM library, the step's products, the dropout draw).
"""
