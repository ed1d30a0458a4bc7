"""The toolchain: everything that makes, trains, measures and ships NCLlama models, apart from the runtime (the flat
modules of ``modeling_nclama`` that a Hub repo carries), which never imports it.

- ``compiler/``: Python source -> programs (parse, lower, allocate, optimize, assemble); ``compile_library`` and
  ``standard_library`` (``stdlib.py``, the standard library's source) build a ``Library``;
- ``tasks``, ``adversarial``, ``tool_use``, ``tokenization``: data and tokenizers;
- ``training``, ``evaluation``, ``checkpoints``, ``bases``, ``hub``: recipes, Trainer, evaluation, export and push;
- ``bench``, ``analysis``, ``reports``: measurements and plots; ``cli``: the ``nclama`` command.
"""
