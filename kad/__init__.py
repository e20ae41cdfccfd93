"""kad: KAD decoding on Hugging Face causal LMs (DESIGN §5), built on ``kad_kernels``.

This package holds the batched decoding loop, the evaluation harness and the ``kad``
command line; none of them exists yet (the decoding-loop issue adds them).  Until
then, use ``kad_kernels.sample`` / ``kad_kernels.verify`` directly, as in
``examples/quickstart.py``.
"""
