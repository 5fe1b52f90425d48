"""The PyTorch backend: D2L's dropout MLP and its trainer in PyTorch, in four modules.

- ``model``: the section's ``dropout_layer`` and the two models in PyTorch's stock layers: ``DropoutMLP`` (concise:
  ``nn.Sequential`` with ``nn.Dropout``) and ``DropoutMLPScratch`` (three ``nn.Linear`` and ``dropout_layer``), with
  the other noise kinds and injected masks;
- ``backend``: the contract, stock tier: ``torch.optim.SGD`` and ``loss.backward()`` per batch, ``torch.compile(model)``
  with its defaults in compiled mode;
- ``tuned``: the tuned tier, a subclass of the stock ``Backend``: ``autograd.grad`` with a foreach SGD update, and in
  compiled mode the whole training step as one graph (two steps a call) with dropout's masks from random bits and the
  CPU products on oneDNN;
- ``probes``: the bench's instrumentation of a built backend (GEMM library, the step's products, the noise draw).
"""
