"""The model side: the only modules that import torch, transformers or peft, and only inside the functions that
run models (importing this package loads none of them).

- :mod:`.models`: base models (aliases, conversion, resolution, loading, the in-process cache), adapters.
- :mod:`.data`: the query's columns checked; pairs tokenized with the chat template; packed random batches.
- :mod:`.training`: the LoRA training loop; :mod:`.kernels` its faster CPU pieces (imports torch on import).
- :mod:`.complete`: COMPLETE's batched generation.
- :mod:`.export`: a fine-tuned model written as a PEFT adapter folder.
"""
