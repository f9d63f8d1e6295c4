"""Metrics: answers, exact match per task kind, reasoning metrics, score(), generation."""

from __future__ import annotations

import pytest

from lossearch.errors import LossearchError
from lossearch.metrics import (
    MATH_METRICS,
    cut_after_answer,
    exact_match,
    extract_answer,
    generate,
    normalize_step,
    reasoning_metrics,
    score,
    steps,
)
from lossearch.tasks import Example, TaskSpec, collate, tokenize

MATH = TaskSpec("gsm8k", "math")
CHOICE = TaskSpec("openbookqa", "choice")
STRING = TaskSpec("jsonl", "string")


# --- answers and exact match ---------------------------------------------------------------


def test_cut_and_extract_answer():
    assert cut_after_answer("<<1+2=3>>\n#### 3\n#### 4 junk") == "<<1+2=3>>\n#### 3"
    assert cut_after_answer("<<1+2=3>>\n#### 3") == "<<1+2=3>>\n#### 3"
    assert cut_after_answer("no answer\nhere") == "no answer\nhere"
    assert extract_answer("x\n####  1,080 \nmore") == "1,080"
    assert extract_answer("<<1+2=3>>") is None


@pytest.mark.parametrize(
    "prediction,reference,expected",
    [
        ("<<6*5=30>>\n#### 30", "<<5*6=30>>\n#### 30", 1.0),
        ("#### 1,080", "#### 1080", 1.0),
        ("#### 12.0", "#### 12", 1.0),
        ("#### $12.", "#### 12", 1.0),
        ("#### 12 apples", "#### 12", 1.0),
        ("#### 0.333333", "#### 0.3333333", 1.0),
        ("#### 13", "#### 12", 0.0),
        ("#### -12", "#### 12", 0.0),
        ("<<6*5=30>>\n30", "#### 30", 0.0),  # malformed: no ####
        ("", "#### 30", 0.0),
        ("#### ", "#### 30", 0.0),
        ("#### 2 : 3", "#### 2 : 3", 1.0),  # non-numeric answers compare as text
        ("#### 2 : 4", "#### 2 : 3", 0.0),
    ],
)
def test_math_exact_match(prediction, reference, expected):
    assert exact_match(MATH, prediction, reference) == expected


@pytest.mark.parametrize(
    "prediction,expected",
    [("B", 1.0), (" b) blue", 1.0), ("(B)", 1.0), ("B. because", 1.0), ("C", 0.0),
     ("Because", 0.0), ("", 0.0)],
)
def test_choice_exact_match(prediction, expected):
    assert exact_match(CHOICE, prediction, "B") == expected


def test_string_exact_match_and_pattern():
    assert exact_match(STRING, " Paris\n", "Paris") == 1.0
    assert exact_match(STRING, "paris", "Paris") == 0.0
    spec = TaskSpec("jsonl", "string", answer_pattern=r"answer is (\S+)")
    assert exact_match(spec, "so the answer is 1,000", "the answer is 1000.0") == 1.0
    assert exact_match(spec, "the answer is blue", "the answer is blue") == 1.0
    assert exact_match(spec, "the answer is 7", "the answer is 8") == 0.0
    assert exact_match(spec, "no idea", "the answer is 8") == 0.0
    whole = TaskSpec("jsonl", "string", answer_pattern=r"\d+")
    assert exact_match(whole, "x 42 y", "42") == 1.0


def test_reference_without_answer_is_user_error():
    with pytest.raises(LossearchError, match="reference has no '#### answer'"):
        exact_match(MATH, "#### 1", "<<1+0=1>>")
    with pytest.raises(LossearchError, match="no answer letter"):
        exact_match(CHOICE, "A", "")
    spec = TaskSpec("jsonl", "string", answer_pattern=r"= (\d+)")
    with pytest.raises(LossearchError, match="does not match answer_pattern"):
        exact_match(spec, "= 1", "one")


# --- steps and reasoning metrics ----------------------------------------------------------


def test_normalize_step():
    assert normalize_step(" 3 + 2 = 5.0 ") == "2+3=5"
    assert normalize_step("1,000*2=2,000") == "2*1000=2000"
    assert normalize_step("12 × 3 = 36") == "3*12=36"
    assert normalize_step("2**3=8") == "2^3=8"
    assert normalize_step("0.50*4=2.00") == "0.5*4=2"
    assert normalize_step("12-5=7") == "12-5=7"  # not commutative: order kept
    assert normalize_step("2*3+4=10") == "2*3+4=10"  # only a lone + or * is sorted
    assert normalize_step("$5+$6") == "5+6"
    assert normalize_step("max(1,200)=200") == "max(1,200)=200"
    assert steps("a <<1+2=3>> b <<3 * 4 = 12>>\n#### 12") == ["1+2=3", "3*4=12"]


REF = "<<2+3=5>>\n<<5*4=20>>\n#### 20"


def test_reasoning_metrics_perfect_and_partial():
    perfect = reasoning_metrics("<<3+2=5>>\n<<4*5=20>>\n#### 20", REF)
    assert perfect == {
        "formula_precision": 1.0, "formula_recall": 1.0, "formula_iou": 1.0,
        "formula_dice": 1.0, "missing_steps": 0.0, "extra_steps": 0.0, "repetitions": 0.0,
        "wrong_operators": 0.0, "inverted_operands": 0.0,
    }
    partial = reasoning_metrics("<<2+3=5>>\n<<5*4=21>>\n#### 21", REF)
    assert partial["formula_precision"] == 0.5 and partial["formula_recall"] == 0.5
    assert partial["formula_iou"] == pytest.approx(1 / 3)
    assert partial["formula_dice"] == 0.5
    assert partial["missing_steps"] == 1 and partial["extra_steps"] == 1
    assert partial["wrong_operators"] == 0 and partial["inverted_operands"] == 0
    more = reasoning_metrics("<<2+3=5>>\n<<5*4=20>>\n<<20-1=19>>\n#### 19", REF)
    assert more["formula_precision"] == pytest.approx(2 / 3) and more["formula_recall"] == 1
    assert more["extra_steps"] == 1 and more["missing_steps"] == 0


def test_reasoning_metrics_empty_sets_and_malformed_predictions():
    both_empty = reasoning_metrics("#### 5", "#### 5")
    assert all(both_empty[k] == 1.0 for k in MATH_METRICS[:4])
    assert all(both_empty[k] == 0.0 for k in MATH_METRICS[4:])
    for garbage in ["", "I think it is five", "<<2+3=5", "#### 20"]:
        out = reasoning_metrics(garbage, REF)
        assert [out[k] for k in MATH_METRICS[:4]] == [0.0, 0.0, 0.0, 0.0]
        assert out["missing_steps"] == 2 and out["extra_steps"] == 0
    extra_only = reasoning_metrics("<<1+1=2>>\n#### 5", "#### 5")
    assert extra_only["formula_precision"] == 0 and extra_only["formula_recall"] == 0
    assert extra_only["extra_steps"] == 1


def test_repetitions():
    out = reasoning_metrics("<<2+3=5>><<2 + 3 = 5>><<3+2=5>><<5*4=20>>#### 20", REF)
    assert out["repetitions"] == 2.0
    assert out["formula_precision"] == 1.0 and out["formula_recall"] == 1.0


def test_wrong_operators_and_inverted_operands():
    ref = "<<12-5=7>>\n<<7/2=3.5>>\n#### 3.5"
    wrong = reasoning_metrics("<<12+5=17>>\n<<17/2=8.5>>\n#### 8.5", ref)
    assert wrong["wrong_operators"] == 1 and wrong["inverted_operands"] == 0
    assert reasoning_metrics("<<5+12=17>>\n#### 17", ref)["wrong_operators"] == 1
    both = reasoning_metrics("<<5-12=-7>>\n<<2/7=0.29>>\n#### 0.29", ref)
    assert both["inverted_operands"] == 2 and both["wrong_operators"] == 0
    # right expression, wrong value: neither
    arith_slip = reasoning_metrics("<<12-5=8>>\n<<8/2=4>>\n#### 4", ref)
    assert arith_slip["wrong_operators"] == 0 and arith_slip["inverted_operands"] == 0
    # swapping the operands of + or * changes nothing: it is a match, not an inversion
    commuted = reasoning_metrics("<<4*5=20>>\n<<3+2=5>>\n#### 20", REF)
    assert commuted["inverted_operands"] == 0 and commuted["formula_iou"] == 1.0
    multi = reasoning_metrics("<<2*3-4=2>>\n#### 2", "<<2*3+4=10>>\n#### 10")
    assert multi["wrong_operators"] == 1
    reordered = reasoning_metrics("<<4+2*3=10>>\n#### 10", "<<2*3+4=10>>\n#### 10")
    assert reordered["wrong_operators"] == 0


# --- score -------------------------------------------------------------------------------


def test_score_means_and_keys():
    preds = ["<<2+3=5>>\n<<5*4=20>>\n#### 20", "nonsense"]
    out = score(MATH, preds, [REF, REF])
    assert set(out) == {"exact_match", *MATH_METRICS}
    assert out["exact_match"] == 0.5
    assert out["formula_iou"] == 0.5 and out["missing_steps"] == 1.0
    by_name = score("gsm8k", preds, [REF, REF])
    assert by_name == out
    assert score("hellaswag", ["A", "B", "C"], ["A", "B", "D"]) == {
        "exact_match": pytest.approx(2 / 3)
    }
    pattern = score("jsonl", ["x = 4"], ["y = 4.0"], answer_pattern=r"= (\S+)")
    assert pattern == {"exact_match": 1.0}


def test_score_bad_input():
    with pytest.raises(LossearchError, match="2 predictions but 1 references"):
        score(MATH, ["a", "b"], [REF])
    with pytest.raises(LossearchError, match="nothing to score"):
        score(MATH, [], [])
    with pytest.raises(LossearchError, match="unknown task"):
        score("nope", ["a"], ["a"])


# --- generation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    import torch

    from lossearch.models import build_tiny_model
    from lossearch.tiny import build_tiny_tokenizer

    torch.set_num_threads(1)
    # a larger init than the default makes a random model's greedy text varied
    return build_tiny_model(0, initializer_range=0.5), build_tiny_tokenizer()


def test_left_padded_batch_matches_each_prompt_alone(tiny):
    model, tok = tiny
    prompts = ["Q: a", "Q: Tom has 7 apples and buys 5 more.\nA: ", "hello there, how", "x", "ab"]
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    alone = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert len(set(batched)) == len(prompts) and all(batched)
    assert all(len(t) <= 12 for t in batched)
    model.train()
    assert generate(model, tok, prompts[:1], max_new_tokens=3) == [alone[0][:3]]
    assert model.training  # mode restored
    model.eval()
    assert generate(model, tok, [], max_new_tokens=3) == []


@pytest.fixture(scope="module")
def memorised():
    """The tiny model trained until it *provably* says one fixed answer followed by junk.

    Training stops on a checked condition, not after a step count: under teacher forcing
    every target token (EOS included) must be the argmax with probability > 0.9. Greedy
    decoding from the prompt then reproduces the target exactly on any CPU, because each
    greedy step sees the same prefix the check saw. The moderate learning rate and
    clipping keep the optimisation from oscillating (lr 1e-2 did on an AVX2 machine).
    """
    import torch

    from lossearch.models import build_tiny_model
    from lossearch.tiny import build_tiny_tokenizer

    torch.set_num_threads(1)
    tok = build_tiny_tokenizer()
    features, _ = tokenize([Example("Q: 1+1\nA: ", "<<1+1=2>>\n#### 2\n#### 3 junk")], tok, 64)
    batch = collate(features, tok.pad_token_id)
    labels = batch["labels"][0, 1:]
    supervised = labels != -100
    torch.manual_seed(0)
    model = build_tiny_model(1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    learned = False
    for _ in range(2000):
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        with torch.no_grad():
            probs = out.logits[0, :-1].float().softmax(-1)[supervised]
            target = labels[supervised]
            learned = bool(
                (probs.argmax(-1) == target).all()
                and (probs.gather(1, target[:, None]) > 0.9).all()
            )
        if learned:
            break
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert learned, "fixture: the tiny model did not memorise the string in 2000 steps"
    model.eval()
    return model, tok


def test_stop_after_answer_cuts_and_stops_early(memorised):
    model, tok = memorised
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        full = generate(model, tok, ["Q: 1+1\nA: "], max_new_tokens=40)
        n_full = len(calls)
        calls.clear()
        cut = generate(model, tok, ["Q: 1+1\nA: "], max_new_tokens=40, stop_after_answer=True)
        n_cut = len(calls)
    finally:
        handle.remove()
    assert full == ["<<1+1=2>>\n#### 2\n#### 3 junk"]  # stopped at EOS
    assert cut == ["<<1+1=2>>\n#### 2"]
    assert n_cut == len("<<1+1=2>>\n#### 2\n") < n_full
    assert score(MATH, cut, ["<<1+1=2>>\n#### 2"])["exact_match"] == 1.0
    short = generate(model, tok, ["Q: 1+1\nA: "], max_new_tokens=5, stop_after_answer=True)
    assert short == ["<<1+1"]
