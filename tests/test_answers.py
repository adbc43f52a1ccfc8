import json

import pytest

from bmc_data.pairs.answers import answers_match, check_answer, extract_answer


@pytest.mark.parametrize("text,expected", [
    ("reasoning\nThe answer is have knowledge", "have knowledge"),
    ("so the final answer is: 42.", "42"),
    ("Janet makes 18 dollars.\n#### 18", "18"),
    ("We get \\boxed{\\frac{1}{2}} at the end", "\\frac{1}{2}"),
    ("The answer is 3. Wait, no. The answer is 5", "5"),
    ("no final answer here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_math_answers_compare_numerically():
    assert answers_match("$1,200.00", "1200", "math")
    assert not answers_match("1201", "1200", "math")


def test_qa_answers_compare_normalised():
    assert answers_match("The Bedroom.", "bedroom", "qa")
    assert not answers_match("kitchen", "bedroom", "qa")


def test_check_answer_reasons():
    assert check_answer("The answer is 5", "6", "math") == (False, "final answer '5' does not match the ground truth '6'")
    ok, why = check_answer("no answer", "6", "math")
    assert not ok and "states no final answer" in why


def test_every_shared_solution_reaches_its_own_answer(shared_data):
    """The extraction must agree with the real data's own ground truth (ECQA, QASC, OpenBookQA, GSM8K)."""
    checked = 0
    for name in ("ecqa-train", "qasc-train", "openbookqa-train"):
        for line in (shared_data / "qa" / f"{name}.jsonl").read_text().splitlines()[:300]:
            row = json.loads(line)
            assert check_answer(row["solution"], row["answer"], "qa")[0], row
            checked += 1
    for line in (shared_data / "math" / "gsm8k-test.jsonl").read_text().splitlines()[:300]:
        row = json.loads(line)
        gold = row["answer"].rsplit("####", 1)[1].strip()
        assert check_answer(row["answer"], gold, "math")[0]
        checked += 1
    assert checked == 1200


@pytest.mark.parametrize("predicted,gold", [
    ("1/2", "\\frac{1}{2}"), ("0.5", "\\dfrac{1}{2}"), ("\\frac12", "0.5"), ("1e3", "1000"), ("1.5E-3", "0.0015"),
    ("1,000", "1000"), ("6.0", "6"), ("72 dollars", "72"), ("5 cm", "5"), ("\\$18", "18"), ("50\\%", "0.5"),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"), ("x+1", "1+x"), ("-3", "−3"),
])
def test_math_answers_compare_by_value(predicted, gold):
    assert answers_match(predicted, gold, "math")
    assert check_answer(f"Some work.\nThe answer is {predicted}", gold, "math")[0]


@pytest.mark.parametrize("predicted,gold", [
    ("1/3", "0.33"), ("1e3", "100"), ("\\frac{1}{2}", "2"), ("72 dollars", "73"), ("x+1", "x+2"), ("7", "-7"),
])
def test_math_answers_that_differ_in_value_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold, "math")


def test_one_compare_function_serves_bridging_and_sampling():
    import bmc_data.bridging.checks as checks
    import bmc_data.bridging.sampling as sampling
    from bmc_data.pairs import answers

    assert checks.check_answer is answers.check_answer and sampling.check_answer is answers.check_answer


# A held-out GSM8K ỹ_w of the embedded editor (bench/results/embedded_editor_heldout.json, before the fix): the
# editor changed one answer line and left the others; the old check read only `#### 18` and passed it.
_CONFLICTING_GSM8K = ("Janet’s ducks lay 16 eggs per day, so she lays 3 * 16 = 48 duck eggs daily.\n"
                      "The answer is 3 * 48 = 176 dollars.\n#### 18\nThe answer is 176")


@pytest.mark.parametrize("text,gold,task", [
    (_CONFLICTING_GSM8K, "18", "math"),
    ("The answer is 150 * $80,000 = $960,000\n\nSo, the answer is 70000", "70000", "math"),
    ("The answer is 3. Wait, no. The answer is 5", "5", "math"),
    ("\\boxed{4} was wrong; the result is \\boxed{5}", "5", "math"),
    ("The answer is the room with a candle. The answer is 2. The answer is bedroom", "bedroom", "qa"),
])
def test_a_response_stating_another_final_answer_anywhere_fails(text, gold, task):
    assert extract_answer(text) == gold or answers_match(extract_answer(text), gold, task)  # the last one is right
    ok, why = check_answer(text, gold, task)
    assert not ok and why.startswith("states conflicting final answers"), why


@pytest.mark.parametrize("text,gold,task,stated", [
    ("Work.\nThe answer is 18.\n#### 18", "18", "math", ["18", "18"]),
    ("So the answer is 72 dollars.\n#### 72", "72", "math", ["72 dollars", "72"]),
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5", "math", ["\\frac{1}{2}"]),
    ("The answer is: The answer is:\nThe answer is stress.", "stress", "qa", ["stress"]),
    ("Candles are lit in a bedroom.\nThe answer is bedroom", "bedroom", "qa", ["bedroom"]),
])
def test_repeating_the_same_final_answer_is_fine(text, gold, task, stated):
    from bmc_data.pairs.answers import stated_answers

    assert stated_answers(text) == stated
    assert check_answer(text, gold, task) == (True, "")
