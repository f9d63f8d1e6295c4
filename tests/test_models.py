"""Tests for lossearch.models: tiny model/tokenizer, loading by path, LoRA, checkpoints.

Everything is built locally with small random configs; nothing touches the network (the hub is
forced offline).
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import peft
import pytest
import torch
from transformers import (
    AutoTokenizer,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    StableLmConfig,
    StableLmForCausalLM,
)

from lossearch.config import LoraConfig, ModelConfig
from lossearch.errors import LossearchError
from lossearch.models import (
    build_tiny_model,
    count_parameters,
    llama_config_for_size,
    load_checkpoint,
    load_model_and_tokenizer,
    load_weights,
    lora_target_modules,
    paper_lora_target_modules,
    save_model,
    unwrap,
)
from lossearch.tiny import TINY_VOCAB_SIZE, build_tiny_tokenizer

# peft 0.21 still reads the deprecated transformers property internally
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")

TEXT = "Question: 12 + 7?\n<<12+7=19>>\n#### 19"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _small_model(family: str) -> PreTrainedModel:
    v = TINY_VOCAB_SIZE
    if family == "llama":
        config = llama_config_for_size(32, 2, 4, v, intermediate=64, max_position_embeddings=64)
        return LlamaForCausalLM(config)
    if family == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=v,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        return GPTNeoXForCausalLM(config)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4))
    if family == "opt":
        config = OPTConfig(
            vocab_size=v,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        )
        return OPTForCausalLM(config)
    if family == "llama_untied":  # Llama-2-7B's layout: lm_head not tied to the embedding
        config = llama_config_for_size(
            32, 2, 4, v, intermediate=64, max_position_embeddings=64, tie_word_embeddings=False
        )
        return LlamaForCausalLM(config)
    if family == "falcon":  # Falcon-7B's layout: multi-query attention, parallel block
        config = FalconConfig(
            vocab_size=v,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            parallel_attn=True,
            new_decoder_architecture=False,
        )
        return FalconForCausalLM(config)
    if family == "stablelm":
        config = StableLmConfig(
            vocab_size=v,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
        return StableLmForCausalLM(config)
    raise AssertionError(family)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small random models of several families saved with the tiny char tokenizer.

    The GPT-NeoX tokenizer is saved without a pad token (the loader must fall back to eos).
    """
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    torch.manual_seed(0)
    for family in ("llama", "gpt_neox", "gpt2", "opt"):
        tokenizer = build_tiny_tokenizer()
        if family == "gpt_neox":
            tokenizer.pad_token = None
        model = _small_model(family)
        dirs[family] = root / family
        model.save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


def _batch(tokenizer, texts=(TEXT, "12+7=19")) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# --- tiny ----------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_in_seed() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_model(0), build_tiny_model(0), build_tiny_model(1)
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG must be untouched"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"]
    )


def test_tiny_model_size() -> None:
    model = build_tiny_model()
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (128, 512, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 4)
    assert cfg.max_position_embeddings == 256
    assert cfg.vocab_size == TINY_VOCAB_SIZE == len(build_tiny_tokenizer())
    trainable, total = count_parameters(model)
    assert trainable == total
    assert 500_000 < total < 580_000


def test_tiny_tokenizer_round_trips_text_exactly() -> None:
    tok = build_tiny_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert len(ids) == len(TEXT) + 1  # one token per character, plus <s>
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    spaced = " a  b . , ' ?\n x "
    assert tok.decode(tok(spaced)["input_ids"], skip_special_tokens=True) == spaced
    assert tok("é")["input_ids"][1] == tok.unk_token_id
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    ]
    assert tok.pad_token_id == 0
    batch = tok(["ab", "abcd"], padding=True)
    assert tok.padding_side == "right"
    assert batch["input_ids"][0][-2:] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [1, 1, 1, 0, 0]


def test_tiny_tokenizer_save_pretrained_round_trip(tmp_path: Path) -> None:
    tok = build_tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert loaded.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "padding_side"):
        assert getattr(loaded, attr) == getattr(tok, attr)
    assert len(loaded) == len(tok)


def test_load_tiny_and_train_step() -> None:
    model, tok = load_model_and_tokenizer(ModelConfig(), seed=3)
    assert isinstance(model, LlamaForCausalLM)
    ref = build_tiny_model(3)
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)
    batch = _batch(tok)
    model.train()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiny_dtype_and_gradient_checkpointing() -> None:
    cfg = ModelConfig(dtype="bfloat16", gradient_checkpointing=True)
    model, tok = load_model_and_tokenizer(cfg)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.is_activation_checkpointing
    model.train()
    batch = _batch(tok)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_tiny_with_lora_is_refused() -> None:
    with pytest.raises(LossearchError, match="tiny"):
        load_model_and_tokenizer(ModelConfig(lora=LoraConfig()))


def test_llama_config_for_size_about_100m() -> None:
    config = llama_config_for_size(768, 12, 12, 32000)
    assert config.intermediate_size == 2048
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    _, total = count_parameters(model)
    assert 90e6 < total < 120e6


# --- loading by path, LoRA -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "targets"),
    [
        ("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("gpt_neox", ["query_key_value"]),
        ("gpt2", ["c_attn"]),
    ],
)
def test_load_by_path_with_lora(model_dirs: dict[str, Path], family: str, targets) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs[family]), lora=LoraConfig(r=4))
    model, tok = load_model_and_tokenizer(cfg, seed=0)
    assert isinstance(model, peft.PeftModel)
    assert model.config.model_type == family
    assert lora_target_modules(model) == targets
    lora_cfg = model.peft_config["default"]
    assert set(lora_cfg.target_modules) == set(targets)
    assert lora_cfg.fan_in_fan_out == (family == "gpt2")
    # parameter names look like "...self_attn.q_proj.lora_A.default.weight"
    wrapped = {
        n.split(".lora_A")[0].rsplit(".", 1)[-1]
        for n, _ in model.named_parameters()
        if "lora_A" in n
    }
    assert wrapped == set(targets)

    for name, param in model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
    trainable, total = count_parameters(model)
    assert 0 < trainable < total

    assert tok.pad_token is not None and tok.padding_side == "right"
    model.train()
    batch = _batch(tok)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name


_LLAMA_PAPER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(
    ("family", "model_type", "targets"),
    [
        ("llama_untied", "llama", [*_LLAMA_PAPER, "lm_head"]),
        ("stablelm", "stablelm", [*_LLAMA_PAPER, "lm_head"]),
        ("falcon", "falcon", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
        ("gpt_neox", "gpt_neox", ["query_key_value"]),
    ],
)
def test_paper_lora_targets(tmp_path: Path, family: str, model_type: str, targets) -> None:
    """``target_modules: paper`` puts LoRA exactly where the paper's code did."""
    torch.manual_seed(0)
    base = _small_model(family)
    # every linear layer with one of those last names, and no other, must get an adapter
    expected = {
        name
        for name, module in base.named_modules()
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear)
    }
    base.save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path), lora=LoraConfig(target_modules="paper"))
    model, tok = load_model_and_tokenizer(cfg, seed=0)
    assert model.config.model_type == model_type
    assert paper_lora_target_modules(model) == targets
    lora_cfg = model.peft_config["default"]
    assert (lora_cfg.r, lora_cfg.lora_alpha, lora_cfg.lora_dropout) == (8, 16, 0.05)
    adapted = {
        name
        for name, module in model.base_model.model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    assert adapted == expected and {n.rsplit(".", 1)[-1] for n in adapted} == set(targets)
    assert ("lm_head" in adapted) == ("lm_head" in targets)
    model.train()
    batch = _batch(tok)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, param in model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
        assert (param.grad is not None) == ("lora_" in name), name


def test_paper_lora_targets_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _small_model("llama_untied").save_pretrained(tmp_path / "base")
    build_tiny_tokenizer().save_pretrained(tmp_path / "base")
    cfg = ModelConfig(name_or_path=str(tmp_path / "base"), lora=LoraConfig(target_modules="paper"))
    model, tok = load_model_and_tokenizer(cfg, seed=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    save_model(model, tok, tmp_path / "ckpt")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert any("lm_head.lora_A" in k for k in saved)
    assert all("lora_" in k for k in saved), "frozen base weights copied into the adapter"
    restored, _ = load_checkpoint(cfg, tmp_path / "ckpt")
    batch = _batch(tok)
    assert torch.equal(_logits(model, batch), _logits(restored, batch))


def test_paper_lora_targets_unknown_model_type(model_dirs: dict[str, Path]) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs["opt"]), lora=LoraConfig(target_modules="paper"))
    with pytest.raises(LossearchError, match="trained no 'opt' model") as info:
        load_model_and_tokenizer(cfg)
    assert "\n" not in str(info.value)


def test_lora_init_is_deterministic_in_seed(model_dirs: dict[str, Path]) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs["llama"]), lora=LoraConfig())
    a, _ = load_model_and_tokenizer(cfg, seed=5)
    b, _ = load_model_and_tokenizer(cfg, seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lora_with_gradient_checkpointing(model_dirs: dict[str, Path]) -> None:
    cfg = ModelConfig(
        name_or_path=str(model_dirs["llama"]), lora=LoraConfig(), gradient_checkpointing=True
    )
    model, tok = load_model_and_tokenizer(cfg)
    assert model.base_model.model.is_activation_checkpointing
    model.train()
    batch = _batch(tok)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_pad_token_falls_back_to_eos(model_dirs: dict[str, Path]) -> None:
    model, tok = load_model_and_tokenizer(ModelConfig(name_or_path=str(model_dirs["gpt_neox"])))
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.eos_token_id


def test_dtype_by_path(model_dirs: dict[str, Path]) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs["llama"]), dtype="bfloat16")
    model, _ = load_model_and_tokenizer(cfg)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_explicit_target_modules(model_dirs: dict[str, Path]) -> None:
    path = str(model_dirs["gpt_neox"])
    model, _ = load_model_and_tokenizer(
        ModelConfig(name_or_path=path, lora=LoraConfig(target_modules=["dense"]))
    )
    assert set(model.peft_config["default"].target_modules) == {"dense"}
    with pytest.raises(LossearchError, match="not found.*nope"):
        load_model_and_tokenizer(
            ModelConfig(name_or_path=path, lora=LoraConfig(target_modules=["nope"]))
        )


def test_auto_targets_fall_back_to_peft_then_fail_naming_the_layers(
    model_dirs: dict[str, Path],
) -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    # OPT is not in lossearch's list: peft's own default targets for it
    model, _ = load_model_and_tokenizer(
        ModelConfig(name_or_path=str(model_dirs["opt"]), lora=LoraConfig())
    )
    assert set(model.peft_config["default"].target_modules) == set(PEFT["opt"])
    odd = _small_model("opt")
    odd.config.model_type = "no_such_family"  # neither lossearch nor peft knows it
    with pytest.raises(LossearchError, match="model type 'no_such_family'.*target_modules"):
        lora_target_modules(odd)
    with pytest.raises(LossearchError, match="q_proj"):  # lists the model's linear layers
        lora_target_modules(odd)


def test_all_linear_targets_every_linear_layer_but_the_output(
    model_dirs: dict[str, Path],
) -> None:
    lora = LoraConfig(target_modules="all-linear")
    cfg = ModelConfig(name_or_path=str(model_dirs["llama"]), lora=lora)
    model, _ = load_model_and_tokenizer(cfg, seed=0)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_missing_paths_and_offline_hub_id(tmp_path: Path) -> None:
    for name in (str(tmp_path / "nope"), "./no/such/dir", "~/no-such-lossearch-model"):
        with pytest.raises(LossearchError, match="model path does not exist"):
            load_model_and_tokenizer(ModelConfig(name_or_path=name))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LossearchError, match="not a directory"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path / "file.txt")))
    with pytest.raises(LossearchError, match="cannot load model from"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path)))  # empty dir
    with pytest.raises(LossearchError, match="'lossearch-test/no-such-model'") as info:
        load_model_and_tokenizer(ModelConfig(name_or_path="lossearch-test/no-such-model"))
    assert "\n" not in str(info.value)


# --- checkpoints ---------------------------------------------------------------------------


def test_save_and_load_checkpoint_full(tmp_path: Path) -> None:
    cfg = ModelConfig()
    model, tok = load_model_and_tokenizer(cfg, seed=7)
    save_model(model, tok, tmp_path / "ckpt")
    restored, tok2 = load_checkpoint(cfg, tmp_path / "ckpt")
    batch = _batch(tok)
    assert torch.equal(_logits(model, batch), _logits(restored, batch))
    assert tok2(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert tok2.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    assert count_parameters(restored) == count_parameters(model)
    with pytest.raises(LossearchError, match="full model weights"):
        load_checkpoint(ModelConfig(lora=LoraConfig()), tmp_path / "ckpt")


def test_save_and_load_checkpoint_lora(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs["llama"]), lora=LoraConfig(r=4))
    model, tok = load_model_and_tokenizer(cfg, seed=1)
    with torch.no_grad():  # lora_B starts at zero; make the adapter matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    save_model(model, tok, tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "adapter_config.json" in files and "config.json" not in files

    restored, _ = load_checkpoint(cfg, tmp_path / "ckpt")
    assert isinstance(restored, peft.PeftModel)
    batch = _batch(tok)
    expected = _logits(model, batch)
    assert torch.equal(expected, _logits(restored, batch))
    base, _ = load_model_and_tokenizer(ModelConfig(name_or_path=cfg.name_or_path))
    assert not torch.allclose(expected, _logits(base, batch))
    for name, param in restored.named_parameters():
        assert param.requires_grad == ("lora_" in name), name

    with pytest.raises(LossearchError, match="LoRA adapter"):
        load_checkpoint(ModelConfig(name_or_path=cfg.name_or_path), tmp_path / "ckpt")
    with pytest.raises(LossearchError, match="checkpoint does not exist"):
        load_checkpoint(cfg, tmp_path / "missing")


def test_load_weights_in_place_full(tmp_path: Path) -> None:
    cfg = ModelConfig()
    saved, tok = load_model_and_tokenizer(cfg, seed=1)
    save_model(saved, tok, tmp_path / "ckpt")
    model, _ = load_model_and_tokenizer(cfg, seed=2)
    params = list(model.parameters())
    load_weights(unwrap(torch.nn.DataParallel(model)), tmp_path / "ckpt")
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    batch = _batch(tok)
    assert torch.equal(_logits(saved, batch), _logits(model, batch))


def test_load_weights_in_place_lora(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = ModelConfig(name_or_path=str(model_dirs["gpt2"]), lora=LoraConfig(r=4))
    saved, tok = load_model_and_tokenizer(cfg, seed=1)
    with torch.no_grad():
        for name, param in saved.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    save_model(saved, tok, tmp_path / "ckpt")
    model, _ = load_model_and_tokenizer(cfg, seed=2)
    params = list(model.parameters())
    assert unwrap(model) is model  # peft wrapper is kept
    load_weights(model, tmp_path / "ckpt")
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    batch = _batch(tok)
    assert torch.equal(_logits(saved, batch), _logits(model, batch))
    with pytest.raises(LossearchError, match="holds a LoRA adapter"):
        load_weights(build_tiny_model(), tmp_path / "ckpt")


def test_peft_is_imported_only_where_lora_is_used():
    """peft costs seconds of every trial process's start: a model without LoRA never loads it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lossearch.config import ModelConfig\n"
        "from lossearch.models import load_model_and_tokenizer, save_model\n"
        "import tempfile\n"
        "model, tok = load_model_and_tokenizer(ModelConfig(), seed=0)\n"
        "save_model(model, tok, tempfile.mkdtemp())\n"
        "print('peft' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
