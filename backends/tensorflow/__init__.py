"""The TensorFlow backend: D2L's dropout MLP and its trainer in TensorFlow 2 with Keras 3, in four modules.

- ``model``: the section's ``dropout_layer`` and the two models in Keras' stock layers: ``DropoutMLP`` (concise:
  ``keras.Sequential`` of ``keras.layers.Dense`` and ``keras.layers.Dropout``) and ``DropoutMLPScratch`` (three
  ``Dense`` layers and ``dropout_layer``), with the other noise kinds and injected masks;
- ``backend``: the contract, stock tier: ``tf.GradientTape`` and ``keras.optimizers.SGD`` per batch, eager TF in eager
  mode and the training step as a ``tf.function`` (with the ``jit_compile`` Keras' ``"auto"`` chooses) in compiled
  mode;
- ``tuned``: the tuned tier, a subclass of the stock ``Backend``: the SGD update written on the variables, the
  training split held as one tensor, the whole epoch as one ``tf.function`` under XLA where TF has more than one
  thread, dropout's masks from Philox bits (``BitDropout``) and XLA:CPU's fusion emitters chosen for the model;
- ``probes``: the bench's instrumentation of a built backend (GEMM library, the step's products, the noise draw).
"""
