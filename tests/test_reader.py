"""The operand reader: numbers and lists from token ids, checked against the text they came from."""
import random
import re

import pytest

from modeling_nclama.reader import OperandReader, Style, token_roles
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def reader(tok):
    return OperandReader(reader_tokens(tok))


def found(reader, tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids, reader.read(ids)


def expected_from_text(text):
    """What a person reads in the text: every number, bracketed lists, and space-separated runs of numbers."""
    numbers = [("number", (m.group(),)) for m in re.finditer(r"\d+", text)]
    lists = [("list", tuple(re.findall(r"\d+", m.group()))) for m in re.finditer(r"\[\d+(?:, ?\d+)*\]", text)]
    bracketed = [m.span() for m in re.finditer(r"\[\d+(?:, ?\d+)*\]", text)]
    for m in re.finditer(r"(?<![\d\[,] )(?<![\d\[,])\d+(?: \d+)+", text):
        if not any(a <= m.start() < b for a, b in bracketed):
            lists.append(("list", tuple(m.group().split())))
    return sorted(numbers), sorted(lists)


@pytest.mark.parametrize(
    "text, numbers, lists",
    [
        ("81273+4406=", ["81273", "4406"], []),
        ("What is 81273 plus 4406?", ["81273", "4406"], []),
        ("Sort the list [5, 3, 9, 1].", ["5", "3", "9", "1"], [["5", "3", "9", "1"]]),
        ("sort: 5 3 9 1 ->", ["5", "3", "9", "1"], [["5", "3", "9", "1"]]),
        ("What is the largest number in [5, 3, 9, 1]?", ["5", "3", "9", "1"], [["5", "3", "9", "1"]]),
        ("gcd(84, 36)=", ["84", "36"], []),
        ("7!=", ["7"], []),
        ("[12,7]", ["12", "7"], [["12", "7"]]),
        ("1000000000007 and 42", ["1000000000007", "42"], []),
    ],
)
def test_canonical_prompts(reader, tok, text, numbers, lists):
    ids, operands = found(reader, tok, text)
    assert [o.items[0] for o in operands if o.kind == "number"] == numbers
    assert [list(o.items) for o in operands if o.kind == "list"] == lists
    for o in operands:  # positions point at the tokens that spell the operand
        spelled = tok.decode(ids[o.start : o.end])
        assert "".join(re.findall(r"\d+", spelled)) == "".join(o.items)


def test_random_prompts_match_the_text(reader, tok):
    rng = random.Random(0)
    words = ["What", "is", "sum", "of", "the", "list", "sort:", "->", "and", "plus", "Sort"]

    def number():
        return str(rng.randrange(10 ** rng.randint(1, 12)))

    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.4:
                parts.append(number())
            elif r < 0.6:
                parts.append("[" + ", ".join(number() for _ in range(rng.randint(1, 6))) + "]")
            else:
                parts.append(rng.choice(words))
        text = " ".join(parts) + rng.choice(["?", ".", "", "="])
        _, operands = found(reader, tok, text)
        numbers, lists = expected_from_text(text)
        assert sorted((o.kind, o.items) for o in operands if o.kind == "number") == numbers, text
        assert sorted((o.kind, o.items) for o in operands if o.kind == "list") == lists, text


def test_number_tokens_split_like_llama3(reader, tok):
    for digits in ["7", "42", "999", "1000", "81273", "1000007", "0", "0042"]:
        assert reader.number_tokens(digits) == tok(digits, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="not a digit string"):
        reader.number_tokens("12a")


def test_operand_values():
    r = OperandReader({"1": "12", "2": "3", "3": " "})
    (n,) = [o for o in r.read([1, 2]) if o.kind == "number"]
    assert n.number == 123
    lst = [o for o in r.read([1, 3, 2]) if o.kind == "list"][0]
    assert lst.values == [12, 3]
    with pytest.raises(ValueError):
        lst.number


@pytest.mark.parametrize("text, items, style", [
    ("[1, 3, 5, 9]", [1, 3, 5, 9], Style(bracketed=True)),
    ("1 3 5 9", [1, 3, 5, 9], Style()),
    ("[1000, 7]", [1000, 7], Style(bracketed=True)),
    ("[12 7 5]", [12, 7, 5], Style(bracketed=True, commas=False)),
    ("[]", [], Style(bracketed=True)),
])
def test_lists_are_written_as_the_tokenizer_writes_them(reader, tok, text, items, style):
    assert reader.list_tokens(items, style) == tok(text, add_special_tokens=False)["input_ids"]
    operands = [o for o in reader.read(tok(text, add_special_tokens=False)["input_ids"]) if o.kind == "list"]
    assert all(o.style == style for o in operands)


@pytest.fixture(scope="module")
def decimal_reader(tok):
    return OperandReader(reader_tokens(tok), decimal_places=3)


def test_decimals_are_one_number_in_fixed_point(decimal_reader, reader, tok):
    text = "insertion_sort:\nkey: [0.549 0.7 0.05 1.0]\npred:\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    (lst,) = [o for o in decimal_reader.read(ids) if o.kind == "list"]
    assert lst.values == [549, 700, 50, 1000]
    assert lst.style == Style(bracketed=True, commas=False, decimal=True)
    assert tok.decode(ids[lst.start : lst.end]) .strip() == "[0.549 0.7 0.05 1.0]"
    # without decimal places, the same text is eight numbers and no list of four
    assert [o.items[0] for o in reader.read(ids) if o.kind == "number"] == ["0", "549", "0", "7", "0", "05", "1", "0"]
    # a fraction longer than the places is not a decimal; a point not followed by a digit ends the number
    (a, b) = decimal_reader.read(tok("0.1234", add_special_tokens=False)["input_ids"])
    assert (a.items, b.items, a.style.decimal) == (("0",), ("1234",), False)
    (n,) = decimal_reader.read(tok("12.", add_special_tokens=False)["input_ids"])
    assert (n.items, n.style.decimal) == (("12",), False)


@pytest.mark.parametrize("value, text", [(549, "0.549"), (430, "0.43"), (5, "0.005"), (0, "0.0"), (1000, "1.0"), (12345, "12.345")])
def test_decimals_are_written_as_python_writes_floats(decimal_reader, tok, value, text):
    assert text == str(value / 1000)
    assert decimal_reader.value_tokens(value, decimal=True) == tok(text, add_special_tokens=False)["input_ids"]
    assert decimal_reader.list_tokens([value, value], Style(bracketed=True, commas=False, decimal=True)) == \
        tok(f"[{text} {text}]", add_special_tokens=False)["input_ids"]


def test_decimal_places_are_checked(tok, reader):
    with pytest.raises(ValueError, match="decimal_places"):
        OperandReader(reader_tokens(tok), decimal_places=4)
    with pytest.raises(ValueError, match="decimal_places > 0"):
        reader.value_tokens(5, decimal=True)


@pytest.mark.parametrize("text, numbers, lists", [
    ("4406-81273=", ["4406", "81273"], []),  # a bare minus between digits is the operator
    ("7-10=", ["7", "10"], []),
    ("4406 - 81273", ["4406", "81273"], []),  # a minus with spaces on both sides is the operator
    ("-5 + 12", ["-5", "12"], []),
    ("What is -81273 plus 4406?", ["-81273", "4406"], []),
    ("Is -5 less than -3?", ["-5", "-3"], []),
    ("gcd(-4, 6)=", ["-4", "6"], []),
    ("7 -10", ["7", "-10"], [["7", "-10"]]),  # a minus that carries its space signs the number after it
    ("the sum of [-3, 4]", ["-3", "4"], [["-3", "4"]]),
    ("Sort the list [-5, 3, -9, 1].", ["-5", "3", "-9", "1"], [["-5", "3", "-9", "1"]]),
    ("sort: -5 3 -9 1 ->", ["-5", "3", "-9", "1"], [["-5", "3", "-9", "1"]]),
    ("max([5, -3])=", ["5", "-3"], [["5", "-3"]]),
    ("sorted([])=", [], [[]]),
    ("[55]", ["55"], [["55"]]),
])
def test_signs_and_short_lists(reader, tok, text, numbers, lists):
    ids, operands = found(reader, tok, text)
    assert [o.items[0] for o in operands if o.kind == "number"] == numbers
    assert [list(o.items) for o in operands if o.kind == "list"] == lists
    for o in operands:  # an operand's tokens spell it, sign included
        spelled = tok.decode(ids[o.start : o.end]).strip(" []=.,")
        if o.kind == "number":
            assert spelled == o.items[0]


def test_reader_table_has_the_signs(tok):
    table = reader_tokens(tok)
    assert {"-", " -"} <= set(table.values())
    r = OperandReader({"1": "5", "2": "[-", "3": "]", "4": ",", "5": " -", "6": "-"})
    (lst,) = [o for o in r.read([2, 1, 4, 5, 1, 3]) if o.kind == "list"]  # "[-5, -5]" with a merged "[-"
    assert lst.values == [-5, -5] and (lst.start, lst.end) == (0, 6) and lst.style.bracketed


def test_results_are_written_as_the_tokenizer_writes_them(reader, tok):
    """Signed numbers of any length and lists of them, with and without the space before them: the writer's tokens
    are the tokenizer's, and reading them back gives the values."""
    rng = random.Random(1)
    for _ in range(500):
        value = rng.choice([-1, 1]) * rng.randrange(10 ** rng.randint(1, 40))
        items = [rng.choice([-1, 1]) * rng.randrange(10 ** rng.randint(1, 6)) for _ in range(rng.randint(0, 8))]
        for lead in ("", " "):
            for text, style in [(reader.value_text(value), None), (reader.list_text(items, Style(bracketed=True)), 1),
                                (reader.list_text(items, Style()), 2)]:
                ids = tok(lead + text, add_special_tokens=False)["input_ids"]
                assert reader.text_tokens(lead + text) == ids, lead + text
                if style is None:
                    (n,) = [o for o in reader.read(ids) if o.kind == "number"]
                    assert n.number == value
                elif style == 1 or len(items) >= 2:
                    (lst,) = [o for o in reader.read(ids) if o.kind == "list"]
                    assert lst.values == items
    assert reader.value_text(-76867) == "-76867" and reader.list_text([-3, 5], Style(bracketed=True)) == "[-3, 5]"
    with pytest.raises(ValueError, match="no token for 'x'"):
        reader.text_tokens("x")


@pytest.mark.parametrize("text, roles", [
    ("42", {"digits"}), ("-", {"sign"}), (" -", {"sign"}), ("(-", {"sign"}), ("=-", {"sign"}), (",-", {"sign"}),
    ("[-", {"sign", "opener"}), (" [-", {"sign", "opener"}), ("[", {"opener"}), ("([", {"opener"}), ("=[", {"opener"}),
    ("[]", {"empty_list"}), (" []", {"empty_list"}), ("([])", {"empty_list"}), ("]", {"closer"}), ("])", {"closer"}),
    ("].", {"closer", "sentence_end"}), (".", {"point", "sentence_end"}), ("?", {"sentence_end"}),
    (",", {"separator"}), (", ", {"separator"}), (" ", {"separator", "space"}),
    ("--", set()), (")-", set()), ("x-", set()), ("->", set()), ("[x", set()), (" yes", set()),
])
def test_token_roles(text, roles):
    assert token_roles(text) == roles


def test_merged_brackets_signs_and_empty_lists():
    """Tokens as SmolLM2 merges them: "max([5, -3])" is "max" "([" "5" "," " -" "3" "])", "sorted([])" is
    "sorted" "([])", "gcd(-4, 6)" has "(-", and "3-8=-5" has "=-" (a sign, but not a separator: no list)."""
    r = OperandReader({"1": "5", "2": "([", "3": "])", "4": ",", "5": " -", "6": "(-", "7": "=-", "8": "([])",
                       "9": "-", "10": "3", "11": " ", "12": " [-", "13": "]"})
    (lst,) = [o for o in r.read([2, 1, 4, 5, 10, 3]) if o.kind == "list"]
    assert lst.values == [5, -3] and (lst.start, lst.end) == (0, 6) and lst.style == Style(bracketed=True)
    assert [(o.kind, o.start, o.end, o.items) for o in r.read([8])] == [("list", 0, 1, ())]
    assert 8 in r.triggers and [o.items for o in r.read([6, 1, 4, 11, 10])] == [("-5",), ("3",)]
    assert [o.items for o in r.read([10, 9, 1, 7, 10])] == [("3",), ("5",), ("-3",)]  # "3-5=-3"
    # "5 [-3]": the " [-" opens a list; it is no separator of a spaced list "5 -3"
    assert [(o.kind, o.items) for o in r.read([1, 12, 10, 13])] == [("number", ("5",)), ("list", ("-3",)),
                                                                    ("number", ("-3",))]
    assert [(o.kind, o.items) for o in r.read([1, 5, 10])][0] == ("list", ("5", "-3"))  # "5 -3"


def test_single_digit_tokenizers_are_written_digit_by_digit():
    """With only single digits in the table (SmolLM2, LLaMA 2), every digit is its own token."""
    table = {str(i): str(i) for i in range(10)} | {"10": " ", "11": " -", "12": "[", "13": "]", "14": ",", "15": "-"}
    r = OperandReader(table)
    assert r.digit_chunk == 1 and r.text_tokens(" -1207") == [11, 1, 2, 0, 7]
    assert r.list_tokens([12, -3], Style(bracketed=True)) == [12, 1, 2, 14, 11, 3, 13]
    assert r.read(r.value_tokens(-1207))[0].number == -1207
