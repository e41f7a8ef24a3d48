"""The model side: the only modules that import torch, transformers or peft, and only inside the functions that
run models (importing this package loads none of them).

- :mod:`.models`: base models (aliases, conversion, resolution, loading, the in-process cache), adapters.
- :mod:`.data`: the query's columns checked; pairs tokenized with the chat template; packed random batches.
- :mod:`.training`: the LoRA training loop; :mod:`.kernels` its faster CPU pieces (imports torch on import);
  :mod:`.lanes` a CPU step's micro-batches shared by the cores.
- :mod:`.complete`: COMPLETE's batched generation.
- :mod:`.export`: a fine-tuned model written as a PEFT adapter folder.

Importing it asks PyTorch, when torch is not loaded yet, for its CPU tensors of 2 MB and more in transparent huge
pages (``THP_MEM_ALLOC_ENABLE``, PyTorch's own switch, read once at its first allocation; a value the user set is
kept). A training step allocates gigabytes of large activations that the allocator maps fresh
(``kernels.steady_allocator``); in 4 KB pages, faulting them in cost about a tenth of a step on a CPU.

It also bounds oneDNN's cache of compiled matrix-product kernels at 256 (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; its
default is 1024; a value the user set is kept). Training's micro-batches change shape from one to the next, so the
cache fills with a kernel per shape, each holding memory: on the training benchmark's data (a CPU with AMX),
resident memory grew by 1.8 GB over the first epoch; with 256, 14 steps took the same CPU time (0.99x) and peaked
about 300 MB lower.
"""

import os as _os
import sys as _sys

if _sys.platform.startswith("linux") and "torch" not in _sys.modules:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
