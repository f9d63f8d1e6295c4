"""Tasks: formatting of each data set's native rows, loading, arith, tokenisation, collation."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lossearch.config import TaskConfig
from lossearch.errors import LossearchError
from lossearch.tasks import (
    Example,
    collate,
    encode_prompt,
    get_task,
    load_task,
    task_names,
    task_spec,
    tokenize,
)
from lossearch.tasks import arith as arith_mod

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"
needs_gsm8k = pytest.mark.skipif(
    not (GSM8K_DIR / "train.jsonl").is_file(), reason="real GSM8K not found beside the repo"
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_rows(pred) -> list[dict]:
    """Real GSM8K training rows (in file order) whose answer satisfies ``pred``."""
    out = []
    with open(GSM8K_DIR / "train.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if pred(row["answer"]):
                out.append(row)
    return out


# --- registry ------------------------------------------------------------------------------


def test_registry_names_and_kinds():
    assert task_names() == ["arith", "gsm8k", "hellaswag", "jsonl", "mathqa", "openbookqa"]
    kinds = {name: task_spec(name).kind for name in task_names()}
    assert kinds == {
        "arith": "math", "gsm8k": "math", "mathqa": "math",
        "openbookqa": "choice", "hellaswag": "choice", "jsonl": "string",
    }
    assert task_spec("jsonl", answer_pattern=r"= (\d+)").answer_pattern == r"= (\d+)"


def test_unknown_task_is_user_error():
    with pytest.raises(LossearchError, match="unknown task 'nope'.*gsm8k"):
        get_task("nope")
    with pytest.raises(LossearchError, match="unknown task"):
        load_task(TaskConfig(name="nope"))


# --- gsm8k ---------------------------------------------------------------------------------


@needs_gsm8k
def test_gsm8k_formulas_on_real_line():
    row = json.loads((GSM8K_DIR / "train.jsonl").open().readline())
    assert row["question"].startswith("Natalia sold clips")
    ex = get_task("gsm8k").to_example(row, TaskConfig(name="gsm8k"))
    assert ex.prompt == f"Question: {row['question']}\nAnswer: "
    assert ex.target == "<<48/2=24>>\n<<48+24=72>>\n#### 72"


@needs_gsm8k
def test_gsm8k_without_annotations_and_with_commas():
    task, cfg = get_task("gsm8k"), TaskConfig(name="gsm8k")
    plain = gsm8k_rows(lambda a: "<<" not in a)[0]
    answer = plain["answer"].rsplit("####", 1)[1].strip()
    assert task.to_example(plain, cfg).target == f"#### {answer.replace(',', '')}"
    comma = gsm8k_rows(lambda a: re.search(r"#### \d{1,3},\d{3}$", a) and "<<" in a)[0]
    target = task.to_example(comma, cfg).target
    final = comma["answer"].rsplit("####", 1)[1].strip()
    assert target.endswith(f"\n#### {final.replace(',', '')}")
    assert "," not in target.splitlines()[-1]
    assert target.count("<<") == comma["answer"].count("<<")


@needs_gsm8k
def test_gsm8k_paper_formulas_are_the_papers_exact_string():
    """``formulas_paper``: the paper's parquet_creator.py target, character for character."""
    task, cfg = get_task("gsm8k"), TaskConfig(name="gsm8k", target_format="formulas_paper")
    row = json.loads((GSM8K_DIR / "train.jsonl").open().readline())
    assert task.to_example(row, cfg).target == "<<48/2=24>> <<48+24=72>> #### 72"
    comma = gsm8k_rows(lambda a: re.search(r"#### \d{1,3},\d{3}$", a) and "<<" in a)[0]
    target = task.to_example(comma, cfg).target
    assert "\n" not in target and target.endswith(comma["answer"].rsplit("\n", 1)[1])
    plain = gsm8k_rows(lambda a: "<<" not in a)[0]
    assert task.to_example(plain, cfg).target == plain["answer"].rsplit("\n", 1)[1]
    for r in gsm8k_rows(lambda a: True)[:500]:  # the paper's two regexes, joined by a space
        paper = " ".join(re.findall(r"(<<[^>]+>>)", r["answer"])
                         + re.findall(r"(#### .+)", r["answer"]))
        assert task.to_example(r, cfg).target == paper


def test_gsm8k_paper_formulas_score_like_ours():
    """The metrics read both formula forms alike: same steps, same answer (commas too)."""
    from lossearch.metrics import extract_answer, score, steps

    rows = [
        {"question": "q", "answer": "He has 1,000+80=<<1000+80=1080>>1,080\n#### 1,080"},
        {"question": "q", "answer": "<<2*3=6>>6 and <<6-8=-2>>-2\n#### -2"},
        {"question": "q", "answer": "No steps.\n#### 7"},
    ]
    task = get_task("gsm8k")
    ours = [task.to_example(r, TaskConfig(name="gsm8k")).target for r in rows]
    paper = [
        task.to_example(r, TaskConfig(name="gsm8k", target_format="formulas_paper")).target
        for r in rows
    ]
    assert paper == ["<<1000+80=1080>> #### 1,080", "<<2*3=6>> <<6-8=-2>> #### -2", "#### 7"]
    assert [steps(p) for p in paper] == [steps(o) for o in ours]
    assert [extract_answer(p) for p in paper] == ["1,080", "-2", "7"]
    spec = task_spec("gsm8k")
    assert score(spec, paper, ours)["exact_match"] == score(spec, ours, paper)["exact_match"] == 1
    assert score(spec, paper, paper)["formula_iou"] == 1


@needs_gsm8k
def test_gsm8k_full_format_keeps_solution():
    row = json.loads((GSM8K_DIR / "train.jsonl").open().readline())
    ex = get_task("gsm8k").to_example(row, TaskConfig(name="gsm8k", target_format="full"))
    assert ex.target == row["answer"]


@needs_gsm8k
def test_gsm8k_loads_from_data_dir():
    data = load_task(TaskConfig(name="gsm8k", data_dir=str(GSM8K_DIR), train_size=30, val_size=7))
    assert len(data.train) == 30 and len(data.validation) == 7
    assert data.spec.kind == "math" and data.spec.stop_after_answer
    assert all(ex.target.splitlines()[-1].startswith("#### ") for ex in data.validation)


def test_gsm8k_from_explicit_jsonl_and_parquet(tmp_path):
    import pandas as pd

    rows = [
        {"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
        {"question": "And 4*5?", "answer": "4*5=<<4*5=20>>20\n#### 20"},
    ]
    train = write_jsonl(tmp_path / "tr.jsonl", rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "ev.parquet")
    ev = str(tmp_path / "ev.parquet")
    cfg = TaskConfig(name="gsm8k", train_file=str(train), validation_file=ev, test_file=ev)
    data = load_task(cfg)
    assert [e.target for e in data.train] == ["<<2+3=5>>\n#### 5", "<<4*5=20>>\n#### 20"]
    assert data.validation == data.train and data.test == data.train
    assert data.validation_source == ev


def test_data_dir_finds_hub_parquet_layout(tmp_path):
    import pandas as pd

    rows = [{"question": "q", "answer": "#### 1"}]
    (tmp_path / "main").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "main" / "train-00000-of-00001.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "main" / "test-00000-of-00001.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "main" / "validation-00000-of-00001.parquet")
    data = load_task(TaskConfig(name="gsm8k", data_dir=str(tmp_path)))
    one = [Example("Question: q\nAnswer: ", "#### 1")]
    assert data.train == data.validation == data.test == one


def test_bad_inputs_are_one_line_user_errors(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "q", "answer": "#### 1"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    cases = {
        "missing": TaskConfig(name="gsm8k", train_file=str(tmp_path / "nope.jsonl"),
                              test_file=str(good)),
        "fields": TaskConfig(
            name="gsm8k",
            train_file=str(write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "solution": "x"}])),
            validation_file=str(good), test_file=str(good),
        ),
        "empty": TaskConfig(name="gsm8k", train_file=str(good), validation_file=str(good),
                            test_file=str(write_jsonl(tmp_path / "e.jsonl", []))),
        "no_test": TaskConfig(name="gsm8k", train_file=str(good), validation_file=str(good),
                              test_file=str(tmp_path / "absent.jsonl")),
        "val_too_big": TaskConfig(name="gsm8k", train_file=str(good), test_file=str(good)),
        "nodir": TaskConfig(name="gsm8k", data_dir=str(tmp_path / "absent")),
        "nosplit": TaskConfig(name="gsm8k", data_dir=str(tmp_path)),
        "no_hash": TaskConfig(
            name="gsm8k", validation_file=str(good), test_file=str(good),
            train_file=str(write_jsonl(tmp_path / "h.jsonl", [{"question": "q", "answer": "5"}])),
        ),
        "jsonl_no_data": TaskConfig(name="jsonl"),
        "malformed": TaskConfig(name="gsm8k", test_file=str(good), train_file=str(bad)),
    }
    messages = {}
    for key, cfg in cases.items():
        with pytest.raises(LossearchError) as info:
            load_task(cfg)
        messages[key] = str(info.value)
        assert "\n" not in messages[key], key
    assert "file not found" in messages["missing"]
    assert "lacks field(s) 'answer'" in messages["fields"]
    assert "no rows" in messages["empty"]
    assert "file not found" in messages["no_test"] and "absent.jsonl" in messages["no_test"]
    assert "task.val_size 200 is not smaller than the 1 training" in messages["val_too_big"]
    assert "data directory not found" in messages["nodir"]
    assert "no train file" in messages["nosplit"]
    assert "could not read" in messages["malformed"]
    assert "####" in messages["no_hash"]
    assert "needs local data" in messages["jsonl_no_data"]


def test_hub_failure_is_user_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LossearchError, match="openai/gsm8k.*no network.*data_dir") as info:
        load_task(TaskConfig(name="gsm8k"))
    assert "\n" not in str(info.value)


# --- mathqa / openbookqa / hellaswag: hand-written rows in the native layouts ---------------

MATHQA_ROW = {
    "Problem": "a shop sold 38 of its 40 pens . what percent of the pens did it sell ?",
    "Rationale": "\"38 / 40 * 100 = 95 % answer a\"",
    "options": "a ) 95 , b ) 27.675 , c ) 30 , d ) 41 , e ) 35",
    "correct": "a",
    "annotated_formula": "multiply(divide(38, 40), const_100)",
    "linear_formula": "divide(n0,n1)|multiply(#0,const_100)|",
    "category": "gain",
}


def test_mathqa_formatting():
    ex = get_task("mathqa").to_example(MATHQA_ROW, TaskConfig(name="mathqa"))
    assert ex.prompt == (
        "Question: a shop sold 38 of its 40 pens . what percent of the pens did it sell ?\n"
        "Options: a ) 95 , b ) 27.675 , c ) 30 , d ) 41 , e ) 35\nAnswer: "
    )
    assert ex.target == "<<38/40=0.95>>\n<<0.95*100=95>>\n#### 95"


def test_mathqa_answer_sources_and_symbolic_fallback():
    task, cfg = get_task("mathqa"), TaskConfig(name="mathqa")
    decimal = task.to_example({**MATHQA_ROW, "correct": "b"}, cfg)
    assert decimal.target.endswith("#### 27.675")
    frac = {**MATHQA_ROW, "options": "a ) 1 / 2 , b ) rs . 1,200 , c ) 2 : 3 , d ) 4 , e ) 5"}
    assert task.to_example(frac, cfg).target.endswith("#### 0.5")
    assert task.to_example({**frac, "correct": "b"}, cfg).target.endswith("#### 1200")
    # no single number in the option: the program's final value
    assert task.to_example({**frac, "correct": "c"}, cfg).target.endswith("#### 95")
    unknown = {**MATHQA_ROW, "linear_formula": "divide(n0,n1)|mystery_op(#0)|"}
    assert task.to_example(unknown, cfg).target == (
        "<<n0/n1=#0>>\n<<mystery_op(#0)=#1>>\n#### 95"
    )
    too_few = {**MATHQA_ROW, "linear_formula": "add(n0,n7)|"}
    assert task.to_example(too_few, cfg).target.startswith("<<n0+n7=#0>>")
    listed = {**MATHQA_ROW, "options": ["a ) 95", "b ) 27.675", "c ) 30", "d ) 41", "e ) 35"]}
    assert task.to_example(listed, cfg) == task.to_example(MATHQA_ROW, cfg)


OBQA_ROW = {
    "id": "7-980",
    "question_stem": "The sun is responsible for",
    "choices": {
        "text": [
            "puppies learning new tricks",
            "children growing up and getting old",
            "flowers wilting in a vase",
            "plants sprouting, blooming and wilting",
        ],
        "label": ["A", "B", "C", "D"],
    },
    "answerKey": "D",
    "fact1": "the sun is the source of energy for physical cycles on Earth",
    "humanScore": 1.0,
    "clarity": 2.0,
    "turkIdAnonymized": "b356d338b7",
}


def test_openbookqa_formatting():
    ex = get_task("openbookqa").to_example(OBQA_ROW, TaskConfig(name="openbookqa"))
    assert ex.prompt == (
        "Context: the sun is the source of energy for physical cycles on Earth\n"
        "Question: The sun is responsible for\n"
        "Choices: A) puppies learning new tricks B) children growing up and getting old "
        "C) flowers wilting in a vase D) plants sprouting, blooming and wilting\nAnswer: "
    )
    assert ex.target == "D"


def test_openbookqa_needs_fact1(tmp_path):
    row = {k: v for k, v in OBQA_ROW.items() if k != "fact1"}
    path = write_jsonl(tmp_path / "o.jsonl", [row])
    cfg = TaskConfig(name="openbookqa", train_file=str(path), validation_file=str(path),
                     test_file=str(path))
    with pytest.raises(LossearchError, match="'fact1'"):
        load_task(cfg)


HELLASWAG_ROW = {
    "ind": 24,
    "activity_label": "Roof shingle removal",
    "ctx_a": "A man is sitting on a roof.",
    "ctx_b": "he",
    "ctx": "A man is sitting on a roof. he",
    "endings": [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ],
    "source_id": "activitynet~v_-JhWjGDPHMY",
    "split": "val",
    "split_type": "indomain",
    "label": "3",
}


def test_hellaswag_formatting_from_parquet(tmp_path):
    import pandas as pd

    ex = get_task("hellaswag").to_example(HELLASWAG_ROW, TaskConfig(name="hellaswag"))
    assert ex.prompt == (
        "Context: Roof shingle removal: A man is sitting on a roof. he\n"
        "Endings: A) is using wrap to wrap a pair of skis. B) is ripping level tiles off. "
        "C) is holding a rubik's cube. D) starts pulling up roofing on a roof.\nAnswer: "
    )
    assert ex.target == "D"
    pd.DataFrame([HELLASWAG_ROW]).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame([HELLASWAG_ROW] * 3).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame([HELLASWAG_ROW]).to_parquet(tmp_path / "validation.parquet")
    # HellaSwag's labelled "validation" is its test split; validation is carved from train
    data = load_task(TaskConfig(name="hellaswag", data_dir=str(tmp_path), val_size=1))
    assert data.test == [ex] and data.validation == [ex] and len(data.train) == 2
    assert "carved" in data.validation_source and data.spec.kind == "choice"


def test_hellaswag_unlabeled_row_is_user_error(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{**HELLASWAG_ROW, "label": ""}])
    with pytest.raises(LossearchError, match="label"):
        load_task(TaskConfig(name="hellaswag", train_file=str(path), validation_file=str(path),
                             test_file=str(path)))


def test_jsonl_task_with_custom_fields(tmp_path):
    rows = [{"q": "2+2=", "a": "4", "other": 1}, {"q": "3+3=", "a": "6", "other": 2}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[1]) + "\n")
    cfg = TaskConfig(name="jsonl", data_dir=str(tmp_path), prompt_field="q", target_field="a",
                     answer_pattern=r"(\d+)")
    data = load_task(cfg)
    assert data.train == [Example("2+2=", "4"), Example("3+3=", "6")]
    assert data.validation == [Example("2+2=", "4")] and data.test == [Example("3+3=", "6")]
    assert data.spec.kind == "string" and data.spec.answer_pattern == r"(\d+)"
    with pytest.raises(LossearchError, match="lacks field"):
        load_task(cfg.model_copy(update={"target_field": "answer"}))
    with pytest.raises(LossearchError, match="not a valid regex"):
        load_task(cfg.model_copy(update={"answer_pattern": "(unclosed"}))


# --- arith ---------------------------------------------------------------------------------


def _formulas(target: str) -> list[tuple[int, str, int, int]]:
    return [
        (int(a), op, int(b), int(v))
        for a, op, b, v in re.findall(r"<<(\d+)([-+*/])(\d+)=(\d+)>>", target)
    ]


def test_arith_is_deterministic_and_independent_of_global_rng():
    cfg = TaskConfig(arith_train_size=300, val_size=50)
    random.seed(1)
    first = load_task(cfg)
    random.seed(2)
    second = load_task(cfg)
    assert first == second
    other = load_task(cfg.model_copy(update={"data_seed": 1}))
    assert other.validation != first.validation and other.train != first.train
    assert other.test != first.test


def test_arith_default_problem_format():
    data = load_task(TaskConfig(arith_train_size=50, val_size=20))
    assert data.spec.kind == "math" and len(data.train) == 50 and len(data.validation) == 20
    for ex in data.train + data.validation:
        assert ex.prompt.startswith("Q: ") and ex.prompt.endswith(" now?\nA: ")
        (a, op, b, v), = _formulas(ex.target)
        assert ex.target == f"<<{a}{op}{b}={v}>>\n#### {v}"
        assert f" {a} " in ex.prompt and f" {b}" in ex.prompt


@pytest.mark.parametrize("steps,max_operand,ops", [(1, 5, "+-"), (2, 9, "+-*/"), (3, 20, "*/")])
def test_arith_knobs(steps, max_operand, ops):
    cfg = TaskConfig(arith_steps=steps, arith_max_operand=max_operand, arith_ops=ops,
                     arith_train_size=200, val_size=40)
    data = load_task(cfg)
    for ex in data.train + data.validation:
        formulas = _formulas(ex.target)
        assert len(formulas) == steps
        for k, (a, op, b, v) in enumerate(formulas):
            assert op in ops
            assert v == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and v >= 0
            if op == "/":
                assert a % b == 0 and 2 <= b <= max_operand
            else:
                assert 1 <= b <= max_operand
            if k == 0 and op != "/":
                assert 1 <= a <= max_operand
            if k > 0:
                assert a == formulas[k - 1][3]  # chained on the running value
        assert ex.target.endswith(f"#### {formulas[-1][3]}")


def test_arith_held_out_problems_not_in_training():
    cfg = TaskConfig(arith_max_operand=3, arith_ops="+", arith_train_size=500, val_size=30)
    data = load_task(cfg)
    held = {ex.prompt for ex in data.validation}
    tested = {ex.prompt for ex in data.test}
    assert len(held) == 30 and len(tested) == 200  # distinct
    assert not held & {ex.prompt for ex in data.train}
    assert not tested & {ex.prompt for ex in data.train} and not tested & held
    # without the exclusion the training stream would have repeated some of them
    unfiltered = arith_mod.generate(500, steps=1, max_operand=3, ops="+", seed=0)
    assert held & {ex.prompt for ex in unfiltered}


def test_arith_train_size_cap_and_impossible_request():
    assert len(load_task(TaskConfig(arith_train_size=100, train_size=10)).train) == 10
    with pytest.raises(LossearchError, match="could not draw"):
        arith_mod.generate(600, steps=1, max_operand=2, ops="+", seed=0, unique=True)


def test_arith_fits_default_max_length():
    from lossearch.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    for steps, max_operand in [(1, 20), (2, 9)]:
        data = load_task(TaskConfig(arith_steps=steps, arith_max_operand=max_operand,
                                    arith_ops="+-*/", arith_train_size=1000, val_size=200))
        _, stats = tokenize(data.train + data.validation, tok, 128)
        assert stats.truncated == 0 and stats.dropped == 0


# --- tokenisation and collation ----------------------------------------------------------


def _bpe_tokenizer(bos: bool):
    """A small BPE tokenizer trained in-process (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["Question: Tom has 7 apples and buys 5 more.\nAnswer: <<7+5=12>>\n#### 12"] * 20
    backend.train_from_iterator(corpus, trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )


EXAMPLES = [
    Example("Q: Tom has 7 apples and buys 5 more. How many apples now?\nA: ",
            "<<7+5=12>>\n#### 12"),
    Example("Question: 2+3?\nAnswer: ", "<<2+3=5>>\n#### 5"),
]


@pytest.mark.parametrize("kind", ["tiny", "bpe_bos", "bpe_no_bos"])
def test_answer_mask_marks_target_and_eos_exactly(kind):
    if kind == "tiny":
        from lossearch.tiny import build_tiny_tokenizer

        tok = build_tiny_tokenizer()
    else:
        tok = _bpe_tokenizer(bos=kind == "bpe_bos")
    features, stats = tokenize(EXAMPLES, tok, 512)
    assert stats.kept == 2 and stats.truncated == stats.dropped == 0
    for ex, f in zip(EXAMPLES, features, strict=True):
        ids, mask = f["input_ids"], f["answer_mask"]
        assert f["labels"] == ids and len(mask) == len(ids)
        answer = [i for i, m in zip(ids, mask, strict=True) if m]
        assert answer[-1] == tok.eos_token_id
        assert answer[:-1] == tok(ex.target, add_special_tokens=False)["input_ids"]
        assert mask == sorted(mask)  # prompt zeros, then target ones
        prompt_ids = ids[: mask.index(1)]
        assert prompt_ids == encode_prompt(tok, ex.prompt)
        assert (prompt_ids[0] == tok.bos_token_id) == (kind != "bpe_no_bos")
        assert tok.decode(answer, skip_special_tokens=True) == ex.target


def test_truncation_accounting():
    from lossearch.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    examples = [
        Example("a" * 5, "b" * 3),   # 1 + 5 + 3 + 1 = 10 tokens: fits
        Example("a" * 7, "b" * 5),   # 1 + 7 = 8 prompt tokens, target cut to 2
        Example("a" * 9, "b"),       # BOS + prompt = 10 >= max_length: dropped
        Example("a" * 12, "b"),      # dropped
    ]
    features, stats = tokenize(examples, tok, 10)
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (4, 2, 1, 2)
    assert stats.summary() == "kept 2/4 (1 truncated, 2 dropped) at max_length=10"
    assert [len(f["input_ids"]) for f in features] == [10, 10]
    assert features[1]["answer_mask"] == [0] * 8 + [1, 1]
    assert tok.eos_token_id not in features[1]["input_ids"]
    with pytest.raises(LossearchError, match="every prompt is longer than max_length=5"):
        tokenize(examples, tok, 5)


def test_collate_pads_and_masks():
    import torch

    from lossearch.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    features, _ = tokenize(EXAMPLES, tok, 256)
    lengths = [len(f["input_ids"]) for f in features]
    batch = collate(features, tok.pad_token_id)
    width = max(lengths)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "answer_mask"}
    assert all(v.shape == (2, width) and v.dtype == torch.long for v in batch.values())
    short = lengths.index(min(lengths))
    n = lengths[short]
    assert batch["input_ids"][short, :n].tolist() == features[short]["input_ids"]
    assert (batch["input_ids"][short, n:] == tok.pad_token_id).all()
    assert (batch["labels"][short, n:] == -100).all()
    assert batch["labels"][short, :n].tolist() == features[short]["input_ids"]
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (width - n)
    assert batch["answer_mask"][short, n:].sum() == 0
    left = collate(features, tok.pad_token_id, padding_side="left")
    assert left["input_ids"][short, width - n :].tolist() == features[short]["input_ids"]
    assert left["attention_mask"][short].tolist() == [0] * (width - n) + [1] * n


def test_arith_splits_frozen_as_jsonl_load_back_identically(tmp_path):
    from lossearch.tasks import save_jsonl

    cfg = TaskConfig(arith_train_size=40, val_size=10, data_seed=7)
    train, validation, test = arith_mod.splits(cfg)
    save_jsonl(train, tmp_path / "train.jsonl")
    save_jsonl(validation, tmp_path / "validation.jsonl")
    save_jsonl(test, tmp_path / "test.jsonl")
    data = load_task(TaskConfig(name="jsonl", data_dir=str(tmp_path)))
    assert data.train == train and data.validation == validation and data.test == test


@pytest.mark.parametrize("ops", ["-", "/", "-/"])
def test_arith_restrictive_operators_still_terminate(ops):
    problems = arith_mod.generate(50, steps=3, max_operand=12, ops=ops, seed=0)
    for ex in problems:
        formulas = _formulas(ex.target)
        assert len(formulas) == 3 and all(op in ops for _, op, _, _ in formulas)
        assert all(v >= 0 for *_, v in formulas)


def test_arith_impossible_operators_are_user_error():
    with pytest.raises(LossearchError, match="cannot make 3-step problems"):
        arith_mod.generate(1, steps=3, max_operand=3, ops="/", seed=0)


@needs_gsm8k
def test_gsm8k_validation_is_carved_from_train_disjoint_and_seeded():
    base = dict(name="gsm8k", data_dir=str(GSM8K_DIR), val_size=50)
    data = load_task(TaskConfig(**base))
    rows = (GSM8K_DIR / "train.jsonl").read_text().splitlines()
    assert len(data.train) + len(data.validation) == len(rows)
    assert not {e.prompt for e in data.validation} & {e.prompt for e in data.train}
    assert len(data.test) == len((GSM8K_DIR / "test.jsonl").read_text().splitlines())
    assert "carved" in data.validation_source
    again = load_task(TaskConfig(**base))
    other = load_task(TaskConfig(**base, data_seed=1))
    assert again.validation == data.validation and other.validation != data.validation
    capped = load_task(TaskConfig(**base, train_size=20, test_size=9))
    assert capped.validation == data.validation  # carved before train_size caps train
    assert len(capped.train) == 20 and capped.test == data.test[:9]


def test_val_size_fraction_is_datasets_train_test_split():
    """A fractional val_size carves exactly as datasets' train_test_split(test_size, seed)."""
    import datasets

    from lossearch.tasks.base import carve

    rows = [{"i": i} for i in range(1003)]
    for frac, seed in [(0.1, 42), (0.25, 0), (0.001, 7)]:
        rest, held = carve(rows, frac, seed)
        split = datasets.Dataset.from_list(rows).train_test_split(test_size=frac, seed=seed)
        assert held == split["test"].to_list() and rest == split["train"].to_list()
    rest, held = carve(rows, 0.1, 42)
    assert len(held) == 101 and len(rest) == 902  # ceil(0.1 * 1003)
    assert {r["i"] for r in rest} | {r["i"] for r in held} == set(range(1003))
    with pytest.raises(LossearchError, match="leaves none to train on"):
        carve(rows[:1], 0.5, 0)


@needs_gsm8k
def test_gsm8k_paper_split_is_90_10_seed_42():
    """val_size 0.1, data_seed 42: the paper's 6725 / 748 split of GSM8K train, in its order."""
    import datasets

    base = dict(name="gsm8k", data_dir=str(GSM8K_DIR), target_format="formulas_paper")
    data = load_task(TaskConfig(**base, val_size=0.1, data_seed=42), test=False)
    assert (len(data.train), len(data.validation)) == (6725, 748)
    assert data.validation_source.startswith("748 examples (0.1 of train) carved from")
    ds = datasets.load_dataset("json", data_files=str(GSM8K_DIR / "train.jsonl"), split="train")
    paper = ds.train_test_split(test_size=0.1, seed=42)  # parquet_creator.py's call
    prompt = "Question: {}\nAnswer: ".format
    assert [e.prompt for e in data.validation] == [prompt(q) for q in paper["test"]["question"]]
    assert [e.prompt for e in data.train] == [prompt(q) for q in paper["train"]["question"]]
    capped = load_task(TaskConfig(**base, val_size=0.1, data_seed=42, train_size=10), test=False)
    assert capped.validation == data.validation and capped.train == data.train[:10]


def test_val_size_fraction_of_a_shipped_validation_split(tmp_path):
    rows = [{"prompt": f"{i}+1=", "target": str(i + 1)} for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "validation.jsonl", rows[:7])
    cfg = TaskConfig(name="jsonl", train_file=str(train), validation_file=str(val), val_size=0.5)
    data = load_task(cfg, test=False)
    assert len(data.validation) == 4 and len(data.train) == 10  # ceil(0.5 * 7), train untouched


@pytest.mark.parametrize(
    ("value", "expected"), [(0.1, 0.1), (200, 200), (200.0, 200), (1, 1), ("0.25", 0.25)]
)
def test_val_size_count_or_fraction(value, expected):
    cfg = TaskConfig(name="gsm8k", val_size=value)
    assert cfg.val_size == expected and type(cfg.val_size) is type(expected)


@pytest.mark.parametrize("value", [0, 1.5, -1, -0.1, True])
def test_val_size_bad_values_are_one_line_errors(value):
    from lossearch.config import load_config

    with pytest.raises(LossearchError, match="task.val_size") as info:
        load_config(None, {"task.name": "gsm8k", "task.val_size": value})
    assert "\n" not in str(info.value)


def test_arith_val_size_must_be_a_count():
    from lossearch.config import load_config

    with pytest.raises(LossearchError, match="arith generates its validation problems"):
        load_config(None, ["task.val_size=0.1"])


def test_search_loads_no_test_split(tmp_path):
    rows = [{"prompt": f"{i}+1=", "target": str(i + 1)} for i in range(5)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = TaskConfig(name="jsonl", train_file=str(train), val_size=2,
                     test_file=str(tmp_path / "never-written.jsonl"))
    data = load_task(cfg, test=False)  # what a search trial does: the test file is not read
    assert data.test == [] and len(data.validation) == 2 and len(data.train) == 3
    with pytest.raises(LossearchError, match="never-written.jsonl"):
        load_task(cfg)


@pytest.mark.parametrize("key", ["eval_size", "eval_file"])
def test_renamed_task_keys_name_the_new_key(key):
    from lossearch.config import load_config

    with pytest.raises(LossearchError, match=f"'task.{key}' was renamed: use task.") as info:
        load_config(None, [f"task.{key}=10"])
    assert "\n" not in str(info.value)
