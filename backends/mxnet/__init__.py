"""The MXNet backend (MXNet 1.9.1 Gluon, the version D2L pins), imported only in its own venv's worker (numpy 1.23):
``backends.remote`` reaches it from the main venv.

- ``model``: D2L's dropout MLP in Gluon's stock layers: the section's ``dropout_layer``, ``DropoutMLP`` (concise:
  ``nn.Dropout``), ``DropoutMLPScratch`` (the section's ``dropout_layer``), the other noise kinds, dropconnect and
  injected masks;
- ``backend``: the contract, stock tier: imperative Gluon (eager) or ``hybridize`` (compiled), ``gluon.Trainer``;
- ``tuned``: the tuned tier: the same law on faster paths (``ByteDropout``, one SGD update over one buffer, the
  compiled epoch bound once with ``Symbol.bind``, the engine chosen from the thread count);
- ``probes``: the bench's instrumentation (GEMM library, the step's products, the dropout draw), by tier and mode.
"""
