"""The model side: the only modules that import torch, transformers or peft, and only inside the functions that
run models (importing this package loads none of them).

- :mod:`.models`: base models (aliases, conversion, resolution, loading, the in-process cache), adapters;
  :mod:`.hub` a model pushed to the Hugging Face Hub.
- :mod:`.data`: the query's columns checked; pairs tokenized with the chat template; packed random batches;
  :mod:`.chat_tokens` the chat template rendered once and rows tokenized in batches.
- :mod:`.training`: the LoRA training loop; :mod:`.preference` its DPO and KTO losses; :mod:`.keep_best` which adapter it keeps and when it stops early;
  :mod:`.kernels` its faster CPU pieces, :mod:`.fused` its fused bf16 decoder pieces and :mod:`.dropout` its LoRA
  dropout (the three import torch on import); :mod:`.lanes` a CPU step's micro-batches shared by the cores;
  :mod:`.distributed` one torchrun training process; :mod:`.devices` what the machine can train on;
  :mod:`.calibrate` ESTIMATE's measured seconds per trained token.
- :mod:`.complete`: COMPLETE's batched generation; :mod:`.decode` continuous batching; :mod:`.batcher` one
  decode loop per base model across requests (a server's), :mod:`.running` its running batch; :mod:`.prefix` a batch's shared prompt prefix; :mod:`.lora_mix` several adapters in one batch; :mod:`.likelihood` a completion's loss;
  :mod:`.schema` a response_format's JSON Schema checked; :mod:`.constrain` constrained decoding (xgrammar),
  :mod:`.closing` how its rows' answers are closed within max_tokens;
  :mod:`.packing` rows packed into prompts that fit a model's window (AI_AGG).
- :mod:`.export`: a fine-tuned model (or a base model) written as a PEFT adapter folder, a merged model,
  (:mod:`.gguf_file`) one GGUF file, or (:mod:`.gguf_lora`) the adapter alone as a GGUF adapter file;
  :mod:`.modelfile` the Ollama Modelfile beside a GGUF export; :mod:`.hf_dataset` rows as Hugging Face datasets
  (a job's snapshot, a query's rows) and a saved dataset folder read back.

Importing it asks PyTorch, when torch is not loaded yet, for its CPU tensors of 2 MB and more in transparent huge
pages (``THP_MEM_ALLOC_ENABLE``, PyTorch's own switch, read once at its first allocation; a value the user set is
kept). A training step allocates gigabytes of large activations that the allocator maps fresh
(``kernels.steady_allocator``); in 4 KB pages, faulting them in cost about a tenth of a step on a CPU.

It also bounds the two caches of compiled matrix-product kernels a CPU step goes through, each keyed by shape and
each entry holding memory (a value the user set is kept): PyTorch's own (ideep's, ``LRU_CACHE_CAPACITY``, default
1024) at 32 entries and oneDNN's (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, default 1024) at 64. Training's micro-batches
change shape from one to the next, so with the defaults both caches filled with kernels that were never used again:
on the training benchmark's data (a CPU with AMX), the heap's live bytes grew by about 40 MB a step through the first
epoch (426 to 991 MB over 15 steps, resident memory 1.8 to 3.4 GB); with both bounds they stayed at 405 MB (resident
2.2 GB at step 15), and steps took no longer.
"""

import os as _os
import sys as _sys

if _sys.platform.startswith("linux") and "torch" not in _sys.modules:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _os.environ.setdefault("LRU_CACHE_CAPACITY", "32")
    _os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
