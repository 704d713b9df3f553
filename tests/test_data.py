import json

import pytest

from rlhf_edu.data import (
    CONCEPTS_SCHEMA,
    SFT_SCHEMA,
    DataError,
    eval_prompts,
    load_concepts,
    load_sft_demos,
    make_prompt,
    read_jsonl,
)


def test_shipped_files_meet_the_spec():
    concepts = load_concepts()
    assert len(concepts) >= 600
    train, evals = load_concepts("train"), load_concepts("eval")
    assert len(train) + len(evals) == len(concepts) and len(evals) >= 100
    names = [c.lower() for c in concepts["concept"]]
    assert len(set(names)) == len(names)
    demos = load_sft_demos()
    assert len(demos) >= 300
    assert set(demos["concept"]) <= set(train["concept"])  # eval concepts never seen in SFT
    assert eval_prompts(3) == [make_prompt(c) for c in evals["concept"][:3]]


def _write(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"concept": "rain", "prompt": "Explain rain to a 10-year-old.", "response": "Rain is water that falls."}


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({k: v for k, v in GOOD.items() if k != "response"}, "line 2: missing field 'response'"),
        ({"concept": "rain", "prompt": GOOD["prompt"], "answer": "x"}, "unexpected field(s) ['answer']"),
        ({**GOOD, "response": "   "}, "line 2, field 'response': empty string"),
        ({**GOOD, "response": 42}, "line 2, field 'response': expected str, got int"),
        ('{"concept": "rain", ', "line 2: not valid JSON"),
        ([1, 2], "line 2: expected a JSON object"),
        ({**GOOD, "extra": 1}, "unexpected field(s) ['extra']"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad_row, message):
    path = _write(tmp_path, [GOOD, bad_row])
    with pytest.raises(DataError) as err:
        read_jsonl(path, SFT_SCHEMA)
    assert str(path) in str(err.value) and message in str(err.value)


def test_wrong_prompt_and_split_are_caught(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "prompt": "Explain snow to a 10-year-old."}])
    with pytest.raises(DataError, match="row 2, field 'prompt'"):
        load_sft_demos(path)
    path = _write(tmp_path, [{"concept": "rain", "category": "earth", "split": "test"}], "c.jsonl")
    with pytest.raises(DataError, match="field 'split'"):
        load_concepts(path=path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl", CONCEPTS_SCHEMA)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(tmp_path / "empty.jsonl", CONCEPTS_SCHEMA)


def test_make_prompt_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        make_prompt(" ")
    with pytest.raises(ValueError, match="eval split has"):
        eval_prompts(10_000)


def test_non_utf8_bytes_a_byte_order_mark_and_a_folder(tmp_path):
    """A file saved in another encoding names its line and byte; a UTF-8 byte-order mark (Windows
    editors) is read through; a folder is not taken for a file."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode() + '{"concept": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 17\)"):
        read_jsonl(path, SFT_SCHEMA)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode())
    assert read_jsonl(bom, SFT_SCHEMA) == [GOOD]
    with pytest.raises(DataError, match="file not found \\(it is a folder\\)"):
        read_jsonl(tmp_path, SFT_SCHEMA)
