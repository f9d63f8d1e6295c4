"""The built-in ``tiny`` model's parts that need no torch: its name, tokenizer and rules.

:mod:`lossearch.models` builds the model itself (``LlamaForCausalLM``, so torch and
transformers' model code, ~5 s of imports). What a driver checks before Ray starts (the
prompt lengths, tiny + LoRA) needs only this module: ``tokenizers`` and transformers'
``PreTrainedTokenizerFast``, which import no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossearch.errors import LossearchError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from lossearch.config import ModelConfig

TINY = "tiny"
"""The ``model.name_or_path`` that names the built-in model."""

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
"""Special tokens, ids 0..3 in this order."""

TINY_CHARS: tuple[str, ...] = ("\n",) + tuple(chr(c) for c in range(32, 127))
"""Newline plus printable ASCII (space .. ``~``), ids 4..99 in this order."""

TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(TINY_CHARS)  # 100

TINY_MAX_LENGTH = 256
"""Longest sequence the tiny model takes (its ``max_position_embeddings``)."""


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer of the ``tiny`` model.

    One token per character over :data:`TINY_CHARS`; any other character becomes ``<unk>``.
    Special tokens ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3. Like Llama's tokenizer, a
    call with ``add_special_tokens=True`` (the default) prepends ``<s>`` and appends nothing;
    ``eos`` is the caller's to add.

    Decoding is exact: ``decode(encode(text), skip_special_tokens=True) == text`` for any text
    over :data:`TINY_CHARS` (characters are joined with nothing between them, no clean-up of
    spaces). The literal strings ``<s>`` etc. in input text are read as the special tokens.

    ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it; ``padding_side``
    is ``"right"``, ``model_max_length`` is :data:`TINY_MAX_LENGTH`.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TINY_CHARS)}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    bos_id = vocab[BOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_MAX_LENGTH,
    )


def refuse_tiny_lora(cfg: ModelConfig) -> None:
    """Raise :class:`LossearchError` for LoRA on ``tiny``: its weights are random, so it is
    trained fully (adapters on random weights adapt nothing useful)."""
    if cfg.name_or_path == TINY and cfg.lora is not None:
        raise LossearchError(
            "model.lora is not supported with the 'tiny' model: its weights are random, so "
            "it is trained fully; remove model.lora or use a pretrained model"
        )
