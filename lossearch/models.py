"""Models and tokenizers: the built-in ``tiny`` Llama, Hugging Face loading, LoRA, checkpoints.

Entry point: :func:`load_model_and_tokenizer` turns a :class:`~lossearch.config.ModelConfig`
into ``(model, tokenizer)``.

``tiny``
    A 2-layer Llama-style causal LM (hidden 128, ~0.54M parameters, tied input/output
    embeddings) with a character-level tokenizer over a fixed vocabulary (see
    :func:`lossearch.tiny.build_tiny_tokenizer`). Built locally, no download, deterministic
    in ``seed``. Trained fully: LoRA on random weights adapts nothing useful, so ``lora`` is
    refused (:func:`lossearch.tiny.refuse_tiny_lora`).

anything else
    A local directory or a Hugging Face hub id, loaded with ``AutoModelForCausalLM`` /
    ``AutoTokenizer`` (the same code for both). Optional LoRA through ``peft``; target modules
    come from :func:`lora_target_modules` (``"auto"``), :func:`paper_lora_target_modules`
    (``"paper"``) or the config's explicit list.

Tokenizer contract (every tokenizer returned here):
    ``pad_token`` is set (``eos`` when the model ships none); ``padding_side`` is ``"right"``,
    the layout training batches use. Generation code sets ``tokenizer.padding_side = "left"``
    itself before batching prompts (and may set it back); nothing here does that.

Model contract: returned in ``eval()`` mode (as ``from_pretrained`` does); the training loop
calls ``model.train()``. ``model.config.pad_token_id`` matches the tokenizer's.

Checkpoints: :func:`save_model` writes a directory (adapter-only for LoRA models, full weights
otherwise, plus the tokenizer). :func:`load_checkpoint` builds a new model from it (re-runs);
:func:`load_weights` copies it into an existing model in place (resume, keeps the optimizer's
parameter references). Both give back exactly the saved outputs. :func:`unwrap` strips
DDP/``torch.compile`` wrappers before saving.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from lossearch.config import LoraConfig as LoraSpec
from lossearch.config import ModelConfig, looks_like_path
from lossearch.errors import LossearchError
from lossearch.tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TINY,
    TINY_MAX_LENGTH,
    TINY_VOCAB_SIZE,
    build_tiny_tokenizer,
    refuse_tiny_lora,
)

if TYPE_CHECKING:
    import peft

# --- LoRA target modules per model family (``model.config.model_type``) --------------------

_ATTN_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    "llama": _ATTN_PROJ,
    "mistral": _ATTN_PROJ,
    "qwen2": _ATTN_PROJ,
    "stablelm": _ATTN_PROJ,
    "gpt_neox": ["query_key_value"],  # Pythia, RedPajama-INCITE
    "falcon": ["query_key_value"],
    "gpt2": ["c_attn"],  # transformers Conv1D: weights stored (in, out)
}
"""Default LoRA targets for ``target_modules: auto``: the attention projections."""

_LLAMA_ALL = [*_ATTN_PROJ, "gate_proj", "up_proj", "down_proj", "lm_head"]
PAPER_LORA_TARGETS: dict[str, list[str]] = {
    "llama": _LLAMA_ALL,  # Llama-2-7B
    "stablelm": _LLAMA_ALL,  # StableLM-3B-4e1t
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],  # Falcon-7B
    "gpt_neox": ["query_key_value"],  # RedPajama-INCITE-3B/7B: the paper's default list
}
"""LoRA targets of the paper's code for its model families (``target_modules: paper``).

Its ``improved_loss.py`` picks them by model name: every linear layer plus ``lm_head`` for
Llama and StableLM, all four linear layers of a Falcon block, and ``query_key_value`` for
anything else (its RedPajama-INCITE models, GPT-NeoX). Always ``r 8, alpha 16, dropout
0.05``."""

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}


# --- tiny model ----------------------------------------------------------------------------


def llama_config_for_size(
    hidden: int,
    layers: int,
    heads: int,
    vocab: int,
    *,
    intermediate: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    **overrides: Any,
) -> LlamaConfig:
    """A ``LlamaConfig`` of a given size, for random-weight models (tiny, benchmarks).

    Args:
        hidden: ``hidden_size``; must be divisible by ``heads``.
        layers: ``num_hidden_layers``.
        heads: ``num_attention_heads`` (= ``num_key_value_heads``: no grouped-query attention).
        vocab: ``vocab_size``.
        intermediate: MLP width; default Llama's rule, 8/3 x ``hidden`` rounded up to a
            multiple of 256 (128 -> 512, 768 -> 2048).
        max_position_embeddings: longest sequence.
        tie_word_embeddings: share the input embedding with the output head (default True).
        **overrides: any other ``LlamaConfig`` field (e.g. ``pad_token_id``).

    Example: ``llama_config_for_size(768, 12, 12, 32000)`` is a ~110M-parameter model.
    """
    if hidden % heads:
        raise LossearchError(f"hidden size {hidden} is not divisible by {heads} heads")
    if intermediate is None:
        intermediate = 256 * math.ceil(8 * hidden / 3 / 256)
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **overrides,
    )


def tiny_config(vocab_size: int = TINY_VOCAB_SIZE, **overrides: Any) -> LlamaConfig:
    """The ``tiny`` model's ``LlamaConfig``; ``overrides`` change any field (size knobs)."""
    fields: dict[str, Any] = {
        "hidden": 128,
        "layers": 2,
        "heads": 4,
        "vocab": vocab_size,
        "intermediate": 512,
        "max_position_embeddings": TINY_MAX_LENGTH,
        "pad_token_id": SPECIAL_TOKENS.index(PAD_TOKEN),
        "bos_token_id": SPECIAL_TOKENS.index(BOS_TOKEN),
        "eos_token_id": SPECIAL_TOKENS.index(EOS_TOKEN),
    }
    names = {"hidden_size": "hidden", "num_hidden_layers": "layers"}
    names |= {"num_attention_heads": "heads", "intermediate_size": "intermediate"}
    for key, value in overrides.items():
        fields[names.get(key, key)] = value
    return llama_config_for_size(**fields)


def build_tiny_model(
    seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE, **overrides: Any
) -> LlamaForCausalLM:
    """Build the ``tiny`` Llama with random weights drawn from ``seed``.

    Same ``seed`` (and arguments) -> identical weights; the global torch RNG is left as it was.
    ``overrides`` are passed to :func:`tiny_config` (e.g. ``num_hidden_layers=4``). float32,
    ``eval()`` mode. Default size: ~0.54M parameters.
    """
    config = tiny_config(vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


# --- loading -------------------------------------------------------------------------------


def load_model_and_tokenizer(
    cfg: ModelConfig, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load the model and tokenizer ``cfg`` names, ready to train.

    ``tiny`` builds :func:`build_tiny_model` (``seed``) and :func:`build_tiny_tokenizer`;
    ``cfg.lora`` with ``tiny`` raises. Any other ``name_or_path`` is a local directory (a
    value starting with ``/``, ``./``, ``../``, ``~`` or naming an existing directory) or a
    hub id; with ``cfg.lora`` the model comes back as a ``peft.PeftModel`` whose base weights
    are frozen and whose LoRA weights (initialised from ``seed``) are trainable.
    ``cfg.gradient_checkpointing`` turns checkpointing on (non-reentrant).

    Raises:
        LossearchError: missing local path, hub id that cannot be loaded (e.g. offline),
            LoRA with ``tiny``, no known LoRA targets for the family with ``"auto"`` or
            ``"paper"``, or explicit targets not found in the model.
    """
    if cfg.name_or_path == TINY:
        refuse_tiny_lora(cfg)
        model: PreTrainedModel = build_tiny_model(seed)
        dtype = _DTYPES[cfg.dtype]
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        tokenizer: PreTrainedTokenizerBase = build_tiny_tokenizer()
    else:
        model, tokenizer = _load_pretrained(cfg.name_or_path, cfg.dtype)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model, for_lora=cfg.lora is not None)
    if cfg.lora is not None:
        model = _add_lora(model, cfg.lora, seed)
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve(name_or_path: str) -> str:
    """A local directory (expanded) or the hub id unchanged; a missing local path raises."""
    if not looks_like_path(name_or_path):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise LossearchError(f"model path does not exist: {name_or_path}")
    if not path.is_dir():
        raise LossearchError(f"model path is not a directory: {name_or_path}")
    return str(path)


def _load_pretrained(
    name_or_path: str, dtype: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``AutoModelForCausalLM`` + ``AutoTokenizer``; every load failure is one LossearchError."""
    source = _resolve(name_or_path)
    is_local = looks_like_path(name_or_path)
    try:
        AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as exc:
        if is_local:
            raise LossearchError(
                f"cannot load model from {name_or_path}: {_first_line(exc)}"
            ) from None
        raise LossearchError(
            f"cannot load model '{name_or_path}': not a local directory, and not loadable from "
            f"the Hugging Face hub (offline, or no such id): {_first_line(exc)}"
        ) from None
    _set_padding(model, tokenizer, name_or_path)
    return model.eval(), tokenizer


def _set_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """pad = eos when the tokenizer has no pad token; right padding; model config in sync."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LossearchError(f"tokenizer of {name} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _enable_gradient_checkpointing(model: PreTrainedModel, for_lora: bool) -> None:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if for_lora:
        # frozen embeddings give activations without grad; checkpointed blocks need one
        model.enable_input_require_grads()


# --- LoRA ----------------------------------------------------------------------------------


def _leaf_linear_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name components of the model's Linear/Conv1D layers (LoRA candidates)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    return sorted(names)


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Default LoRA target module names for ``model``'s family (``model.config.model_type``).

    Llama, Mistral, Qwen2, StableLM: ``q_proj, k_proj, v_proj, o_proj``; GPT-NeoX (Pythia,
    RedPajama) and Falcon: ``query_key_value``; GPT-2: ``c_attn``; any other family peft
    knows: peft's own default list for it. A new list each call.

    Raises:
        LossearchError: a family neither knows; the message lists the model's linear layer
            names and how to pass ``model.lora.target_modules`` explicitly.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    if model_type in PEFT:
        return list(PEFT[model_type])
    candidates = ", ".join(_leaf_linear_names(model))
    raise LossearchError(
        f"no default LoRA target modules for model type '{model_type}'; set them explicitly, "
        f"e.g. model.lora.target_modules='[q_proj,v_proj]' (linear layers in this model: "
        f"{candidates})"
    )


def paper_lora_target_modules(model: torch.nn.Module) -> list[str]:
    """The paper's LoRA targets for ``model``'s family (:data:`PAPER_LORA_TARGETS`).

    Llama and StableLM: ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj,
    lm_head``; Falcon: ``query_key_value, dense, dense_h_to_4h, dense_4h_to_h``; GPT-NeoX
    (RedPajama-INCITE): ``query_key_value``. A new list each call.

    Raises:
        LossearchError: a model type the paper did not train (one line naming it).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PAPER_LORA_TARGETS:
        return list(PAPER_LORA_TARGETS[model_type])
    raise LossearchError(
        f"model.lora.target_modules 'paper': the paper trained no '{model_type}' model "
        f"(its families: {', '.join(PAPER_LORA_TARGETS)}); use 'auto' or a list of names"
    )


def _add_lora(model: PreTrainedModel, lora: LoraSpec, seed: int) -> peft.PeftModel:
    """Wrap ``model`` in LoRA adapters per ``lora``; targets match the last name component."""
    if lora.target_modules == "all-linear":
        return _peft_wrap(model, lora, "all-linear", fan_in_fan_out=False, seed=seed)
    if lora.target_modules == "auto":
        targets = lora_target_modules(model)
    elif lora.target_modules == "paper":
        targets = paper_lora_target_modules(model)
    else:
        targets = list(lora.target_modules)
    matched = [
        module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets
    ]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing or not matched:
        raise LossearchError(
            f"LoRA target modules not found in the model: {', '.join(missing or targets)} "
            f"(linear layers in this model: {', '.join(_leaf_linear_names(model))})"
        )
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in matched)
    return _peft_wrap(model, lora, targets, fan_in_fan_out, seed)


def _peft_wrap(
    model: PreTrainedModel, lora: LoraSpec, targets: Any, fan_in_fan_out: bool, seed: int
) -> peft.PeftModel:
    """``peft.get_peft_model`` with ``targets`` (names, or peft's ``"all-linear"``)."""
    import peft  # imported only where LoRA is used: it adds seconds to every process start

    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = peft.get_peft_model(model, config)
    # the new lora_dropout modules start in train mode; keep the eval() contract
    return peft_model.eval()


# --- checkpoints and counting --------------------------------------------------------------


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> None:
    """Write ``model`` and ``tokenizer`` to directory ``path`` (created if needed).

    A ``peft`` model saves its adapter only (``adapter_config.json`` + adapter weights; the
    base is reloaded from ``model.name_or_path`` on restore); any other model saves its full
    weights and ``config.json``. The tokenizer is saved alongside in both cases. With
    ``lm_head`` among the LoRA targets (``target_modules: paper``) the frozen output matrix is
    not copied into the adapter (peft would by default: ~0.5 GB per checkpoint for a 7B
    Llama); it is reloaded with the base.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(path, save_embedding_layers=False)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def is_adapter_checkpoint(path: str | Path) -> bool:
    """True when ``path`` holds a LoRA adapter written by :func:`save_model`."""
    return (Path(path) / "adapter_config.json").is_file()


def load_checkpoint(
    cfg: ModelConfig, path: str | Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Restore what :func:`save_model` wrote to ``path``, for resuming or re-running training.

    Gives the same outputs as the saved model. Adapter checkpoints need ``cfg.lora`` set; the
    base model is loaded from ``cfg.name_or_path`` and the adapter on top, trainable. Full
    checkpoints (``tiny``, or full fine-tuning) need ``cfg.lora`` unset and are loaded from
    ``path``. ``cfg.dtype`` and ``cfg.gradient_checkpointing`` apply as in
    :func:`load_model_and_tokenizer`; the tokenizer comes from ``path``.

    Raises:
        LossearchError: ``path`` missing or not a checkpoint, or checkpoint kind and
            ``cfg.lora`` disagree.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LossearchError(f"checkpoint does not exist: {path}")
    adapter = is_adapter_checkpoint(path)
    if not adapter and not (path / "config.json").is_file():
        raise LossearchError(f"not a model checkpoint (no config.json): {path}")
    if adapter and cfg.lora is None:
        raise LossearchError(
            f"checkpoint {path} is a LoRA adapter but model.lora is not set in the config"
        )
    if not adapter and cfg.lora is not None:
        raise LossearchError(
            f"checkpoint {path} holds full model weights but model.lora is set in the config"
        )
    if adapter:
        base, _ = _load_pretrained(cfg.name_or_path, cfg.dtype)
        if cfg.gradient_checkpointing:
            _enable_gradient_checkpointing(base, for_lora=True)
        import peft

        model: PreTrainedModel = peft.PeftModel.from_pretrained(base, path, is_trainable=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        _set_padding(model, tokenizer, str(path))
        return model.eval(), tokenizer
    model, tokenizer = _load_pretrained(str(path), cfg.dtype)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model, for_lora=False)
    return model, tokenizer


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights :func:`save_model` wrote to ``path`` into ``model``, in place.

    For resuming training: ``model`` is the freshly built model of the same configuration
    (``peft`` model for an adapter checkpoint, plain model for a full one), possibly already on
    its device; its parameter tensors keep their identity, so an optimizer built on them stays
    valid. Pass the bare model (see :func:`unwrap`). Adapter checkpoints set only the LoRA
    weights; full ones set every weight.

    Raises:
        LossearchError: ``path`` missing, or checkpoint kind and ``model`` disagree.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LossearchError(f"checkpoint does not exist: {path}")
    adapter = is_adapter_checkpoint(path)
    if adapter != is_peft(model):
        kind = "a LoRA adapter" if adapter else "full model weights"
        what = "a LoRA" if is_peft(model) else "a full (non-LoRA)"
        raise LossearchError(f"checkpoint {path} holds {kind}, but the model is {what} model")
    if adapter:
        import peft

        weights = peft.utils.load_peft_weights(str(path), device="cpu")
        result = peft.set_peft_model_state_dict(model, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise LossearchError(f"checkpoint {path} lacks LoRA weights, e.g. {missing[0]}")
        return
    if not (path / "config.json").is_file():
        raise LossearchError(f"not a model checkpoint (no config.json): {path}")
    dtype = next(model.parameters()).dtype
    saved = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.load_state_dict(saved.state_dict())


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (False without importing peft: a process
    that never imported it holds no such model)."""
    peft_module = sys.modules.get("peft")
    return peft_module is not None and isinstance(model, peft_module.PeftModel)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``.

    ``peft`` models are returned as they are (still wrapped in LoRA), so :func:`save_model`
    on the result writes the adapter only.
    """
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; shared (tied) tensors are counted once."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
