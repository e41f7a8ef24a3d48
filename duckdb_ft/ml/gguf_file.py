"""A merged Llama-architecture model as one GGUF file (``gguf`` package), as llama.cpp's converter writes it.

Metadata: ``general.*``, the ``llama.*`` hyperparameters (context, widths, heads, RoPE, norm epsilon), and the
tokenizer (``gpt2`` byte-level BPE: tokens, token types, merges, special ids, the chat template). Tensors carry
llama.cpp's names (``token_embd.weight``, ``blk.N.attn_q.weight``, ...); the query and key projections are
permuted into llama.cpp's rotary layout, as its converter does (transformers' GGUF loader undoes it). 1-D tensors
(norms) stay F32 whatever the file's type, as llama.cpp keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument

#: GGUF file types (``general.file_type``) by the names the export takes.
FILE_TYPES = {"f32": 0, "f16": 1}


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout of a query/key projection (``LlamaModel.permute`` of convert_hf_to_gguf.py)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _tokenizer_fields(tokenizer: Any) -> dict[str, Any]:
    """Tokens by id, their types, and the BPE merges, from a fast (tokenizers-backed) byte-level BPE tokenizer."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidArgument("GGUF export supports byte-level BPE tokenizers (gpt2-style, as SmolLM2 and Llama 3 "
                              "use): export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    types = []
    for i in range(n):
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)], "types": types,
            "merges": merges}


#: llama.cpp's pre-tokenizer names (how text is split before BPE: SmolLM2 splits digits one by one) by SHA-256 of
#: the vocabulary (tokens by id, newline-joined). llama.cpp's converter tells tokenizers apart by a hash too (of a
#: test text's tokens); an unknown vocabulary is written as ``default``.
KNOWN_PRE = {
    "d1f2ce856b324081b621d9e2e8dbd22879f462329f3fd4aa39fa758dddb2ce55": "smollm",  # SmolLM2 (the default model)
}


def _pre_tokenizer(tokens: list[str]) -> str:
    import hashlib

    return KNOWN_PRE.get(hashlib.sha256("\n".join(tokens).encode()).hexdigest(), "default")


def write_gguf(model: Any, tokenizer: Any, path: Path, dtype: str, name: str) -> None:
    """Write ``model`` (a merged ``LlamaForCausalLM``, fp32) and ``tokenizer`` as one GGUF file at ``path``."""
    import gguf
    import numpy as np

    cfg = model.config
    if getattr(cfg, "model_type", "") != "llama":
        raise InvalidArgument(f"GGUF export supports the llama architecture (SmolLM2, Llama, ...), not "
                              f"'{getattr(cfg, 'model_type', '?')}': export --format merged and convert that folder "
                              "with llama.cpp's convert_hf_to_gguf.py")
    if dtype not in FILE_TYPES:
        raise InvalidArgument(f"unknown GGUF dtype '{dtype}': use one of {', '.join(FILE_TYPES)}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise InvalidArgument(f"GGUF export does not write RoPE scaling ('{rope.get('rope_type')}'): export "
                              "--format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    tok = _tokenizer_fields(tokenizer)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name(name)
    w.add_file_type(FILE_TYPES[dtype])
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(tok["tokens"]))
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            add(int(value))
    w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    w.add_add_space_prefix(False)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        out = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if out is None:
            raise InvalidArgument(f"GGUF export cannot name tensor '{hf_name}' for llama.cpp")
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if dtype == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        w.add_tensor(out, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute_for_gguf(w: Any, n_head: int) -> Any:
    """What :func:`write_gguf` does to a query/key projection (tests compare a file's tensors with it)."""
    return _permute(w, n_head)
