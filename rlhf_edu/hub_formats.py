"""Adapters from three public preference-data formats to the course's preference schema.

The course's preference rows are `{"prompt": str, "chosen": str, "rejected": str}`: the user's
message, and two plain-text assistant responses of which a labeler preferred `chosen`. The hub
holds far larger sets of such comparisons; load one with `datasets.load_dataset(..., split=...)`
and `to_course_pairs` turns it into a `datasets.Dataset` the course's notebooks accept.

The three formats:

- `hh_rlhf`: Anthropic's helpful/harmless comparisons (Bai et al. 2022, "Training a Helpful and
  Harmless Assistant with Reinforcement Learning from Human Feedback"; `Anthropic/hh-rlhf`).
  A row is `{"chosen": transcript, "rejected": transcript}`, each transcript a string
  `"\\n\\nHuman: ...\\n\\nAssistant: ..."` of one or more turns; the two are identical up to
  the final Assistant turn.
- `ultrafeedback`: UltraFeedback (Cui et al. 2023), responses rated by GPT-4, binarized for Zephyr
  (Tunstall et al. 2023; `HuggingFaceH4/ultrafeedback_binarized`): the best-rated response is
  `chosen`, a random other one `rejected`. A row has `prompt` (text), `prompt_id`, `chosen` and
  `rejected` as `[user, assistant]` message lists, and `score_chosen`, `score_rejected`.
- `trl`: the preference type of TRL's documented dataset formats ("Dataset formats" in the TRL
  docs): standard (`prompt`, `chosen`, `rejected` as text), conversational (the same three as
  message lists), or implicit prompt (no `prompt`; `chosen` and `rejected` are whole
  conversations that share the user turn).

Deliberate choices:

- **Single-turn prompts.** The course's prompt is one user message. HH-RLHF conversations with
  several Human turns are skipped by default (`multi_turn="skip"`); `"last"` keeps them, with the
  last Human turn as the prompt (earlier turns are dropped, so a response may lean on context the
  prompt no longer shows); `"error"` raises. TRL conversational prompts must be one user message:
  a system message or an earlier turn raises, rather than being silently dropped.
- **Ties are not represented.** The schema only says "chosen beat rejected", so scores are dropped
  and UltraFeedback rows with `score_chosen == score_rejected` are skipped.
- **Strict rows.** Every row is checked, skipped ones included. A bad row raises `DataError` (from
  `rlhf_edu.data`) naming the source, the row index (0-based, as in `dataset[i]`) and the field.
  An empty prompt or response, or `chosen == rejected`, is an error: it teaches no preference.
  Leading and trailing whitespace is stripped from every text.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_edu.data import DataError

if TYPE_CHECKING:
    import datasets

COLUMNS = ("prompt", "chosen", "rejected")
FORMATS = ("hh_rlhf", "ultrafeedback", "trl")
MULTI_TURN = ("skip", "last", "error")

# Each HH-RLHF turn opens with "\n\nHuman: " or "\n\nAssistant: "; the transcript starts with one.
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ ]?")

Row = Mapping[str, Any]


@dataclass(frozen=True)
class _Where:
    """Where a row sits, for error messages: `<source>, row 3 (0-based), field 'chosen': ...`."""

    source: str
    index: int

    def error(self, field: str | None, message: str) -> DataError:
        at = f"{self.source}, row {self.index} (0-based)"
        return DataError(f"{at}, field {field!r}: {message}" if field else f"{at}: {message}")


def _as_row(row: Any, where: _Where) -> Row:
    if not isinstance(row, Mapping):
        raise where.error(None, f"expected a dict, got {type(row).__name__}")
    return row


def _field(row: Row, field: str, kind: type, where: _Where) -> Any:
    """`row[field]`, checked to be present and of type `kind`."""
    if field not in row:
        raise where.error(field, f"missing (the row has {sorted(row)})")
    value = row[field]
    if not isinstance(value, kind):
        raise where.error(field, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _messages(row: Row, field: str, where: _Where) -> list[tuple[str, str]]:
    """`row[field]` as `[(role, content), ...]`, checked to be a list of chat messages."""
    messages = []
    for i, message in enumerate(_field(row, field, list, where)):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise where.error(field, f"message {i}: expected {{'role': str, 'content': str}}")
        messages.append((message["role"], message["content"]))
    return messages


def _roles(messages: list[tuple[str, str]]) -> list[str]:
    return [role for role, _ in messages]


def _course_pair(where: _Where, prompt: str, chosen: str, rejected: str, prompt_field: str) -> dict:
    """The course's row, after the checks every format shares."""
    prompt, chosen, rejected = prompt.strip(), chosen.strip(), rejected.strip()
    if not prompt:
        raise where.error(prompt_field, "empty prompt")
    if not chosen:
        raise where.error("chosen", "empty response")
    if not rejected:
        raise where.error("rejected", "empty response")
    if chosen == rejected:
        raise where.error("rejected", "identical to 'chosen', so the pair holds no preference")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _first_difference(a: Sequence, b: Sequence) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --- Anthropic HH-RLHF --------------------------------------------------------------------------


def _hh_turns(text: str, field: str, where: _Where) -> list[tuple[str, str]]:
    """An HH-RLHF transcript as `[(role, text), ...]`, ending on a Human -> Assistant exchange."""
    parts = _HH_TURN.split(text)  # [before, role, text, role, text, ...]
    turns = [(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2])]
    if "Assistant" not in _roles(turns):
        raise where.error(field, "no 'Assistant:' turn")
    if "Human" not in _roles(turns):
        raise where.error(field, "no 'Human:' turn")
    if parts[0].strip():
        raise where.error(field, f"text before the first turn: {parts[0].strip()[:40]!r}")
    if turns[-1][0] != "Assistant":
        raise where.error(field, "ends on a 'Human:' turn; expected a final 'Assistant:' turn")
    if len(turns) < 2 or turns[-2][0] != "Human":
        raise where.error(field, "the final 'Assistant:' turn does not answer a 'Human:' turn")
    return turns


def from_hh_rlhf(rows: Iterable[Row], *, source: str = "rows", multi_turn: str = "skip") -> list[dict]:
    """Course pairs from Anthropic HH-RLHF rows `{"chosen": transcript, "rejected": transcript}`.

    The prompt is the last Human turn; chosen/rejected are the two final Assistant turns. The two
    transcripts must agree on every turn before that. `multi_turn` decides what happens to
    conversations with more than one Human turn: "skip" (default) drops them, "last" keeps them
    with only the last Human turn as the prompt, "error" raises `DataError`.

    Notebook: 02_label_preferences.ipynb
    """
    if multi_turn not in MULTI_TURN:
        raise ValueError(f"multi_turn must be one of {MULTI_TURN}, got {multi_turn!r}")
    pairs = []
    for index, row in enumerate(rows):
        where = _Where(source, index)
        row = _as_row(row, where)
        chosen = _hh_turns(_field(row, "chosen", str, where), "chosen", where)
        rejected = _hh_turns(_field(row, "rejected", str, where), "rejected", where)
        if chosen[:-1] != rejected[:-1]:
            turn = _first_difference(chosen[:-1], rejected[:-1])
            raise where.error(
                "rejected",
                f"differs from 'chosen' before the final 'Assistant:' turn (at turn {turn}, "
                "0-based); the two transcripts must share everything up to it",
            )
        pair = _course_pair(where, chosen[-2][1], chosen[-1][1], rejected[-1][1], "chosen")
        humans = _roles(chosen).count("Human")
        if humans > 1 and multi_turn == "error":
            raise where.error("chosen", f"{humans} 'Human:' turns, and multi_turn='error'")
        if humans > 1 and multi_turn == "skip":
            continue
        pairs.append(pair)
    return pairs


# --- UltraFeedback, binarized -------------------------------------------------------------------


def _ultrafeedback_response(row: Row, field: str, prompt: str, where: _Where) -> str:
    """The assistant's text from a `[user, assistant]` list whose user message is `prompt`."""
    messages = _messages(row, field, where)
    if _roles(messages) != ["user", "assistant"]:
        raise where.error(field, f"expected roles ['user', 'assistant'], got {_roles(messages)}")
    if messages[0][1].strip() != prompt.strip():
        raise where.error(field, "the user message differs from 'prompt'")
    return messages[1][1]


def _is_tie(row: Row, where: _Where) -> bool:
    """Whether the row's scores, when present, tie; `score_rejected > score_chosen` is an error."""
    if "score_chosen" not in row or "score_rejected" not in row:
        return False
    for field in ("score_chosen", "score_rejected"):
        if isinstance(row[field], bool) or not isinstance(row[field], (int, float)):
            raise where.error(field, f"expected a number, got {type(row[field]).__name__}")
    if row["score_rejected"] > row["score_chosen"]:
        raise where.error("score_rejected", "higher than 'score_chosen'")
    return row["score_rejected"] == row["score_chosen"]


def from_ultrafeedback(rows: Iterable[Row], *, source: str = "rows") -> list[dict]:
    """Course pairs from UltraFeedback-binarized rows (`HuggingFaceH4/ultrafeedback_binarized`).

    Each row has `prompt` (text) and `chosen`/`rejected` lists `[user, assistant]` whose user
    message must equal `prompt`; the assistant messages become chosen/rejected. Rows whose
    `score_chosen` equals `score_rejected` are ties and are skipped; other columns are dropped.

    Notebook: 02_label_preferences.ipynb
    """
    pairs = []
    for index, row in enumerate(rows):
        where = _Where(source, index)
        row = _as_row(row, where)
        prompt = _field(row, "prompt", str, where)
        chosen = _ultrafeedback_response(row, "chosen", prompt, where)
        rejected = _ultrafeedback_response(row, "rejected", prompt, where)
        pair = _course_pair(where, prompt, chosen, rejected, "prompt")
        if not _is_tie(row, where):
            pairs.append(pair)
    return pairs


# --- TRL preference datasets --------------------------------------------------------------------


def _only(messages: list[tuple[str, str]], role: str, field: str, where: _Where) -> str:
    """The content of a list that must hold exactly one message, with role `role`."""
    if _roles(messages) != [role]:
        raise where.error(
            field,
            f"expected one {role!r} message, got roles {_roles(messages)} "
            "(system messages and earlier turns are not part of the course's schema)",
        )
    return messages[0][1]


def _trl_row(row: Row, where: _Where) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) from one TRL preference row in any of its three shapes."""
    if "prompt" not in row:  # implicit prompt: chosen/rejected are whole conversations
        if isinstance(row.get("chosen"), str):
            raise where.error(
                "chosen",
                "plain text and no 'prompt' field: the implicit-prompt standard format has no "
                "separable prompt; use the conversational form or add a 'prompt' column",
            )
        chosen, rejected = _messages(row, "chosen", where), _messages(row, "rejected", where)
        if chosen[:-1] != rejected[:-1]:
            raise where.error("rejected", "differs from 'chosen' before the final message")
        prompt = _only(chosen[:-1], "user", "chosen", where)
        chosen_text = _only(chosen[-1:], "assistant", "chosen", where)
        return prompt, chosen_text, _only(rejected[-1:], "assistant", "rejected", where)
    if isinstance(row["prompt"], str):  # standard
        prompt = row["prompt"]
        return prompt, _field(row, "chosen", str, where), _field(row, "rejected", str, where)
    if isinstance(row["prompt"], list):  # conversational
        prompt = _only(_messages(row, "prompt", where), "user", "prompt", where)
        chosen = _only(_messages(row, "chosen", where), "assistant", "chosen", where)
        rejected = _only(_messages(row, "rejected", where), "assistant", "rejected", where)
        return prompt, chosen, rejected
    raise where.error("prompt", f"expected str or a list of messages, got {type(row['prompt']).__name__}")


def from_trl(rows: Iterable[Row], *, source: str = "rows") -> list[dict]:
    """Course pairs from rows in TRL's preference format, in any of three shapes:

    - standard: `{"prompt": str, "chosen": str, "rejected": str}` (extra columns are dropped);
    - conversational: `{"prompt": [user message], "chosen": [assistant message], "rejected": ...}`;
    - implicit prompt: `{"chosen": [user, assistant], "rejected": [user, assistant]}`, the user
      message shared by both.

    Notebook: 02_label_preferences.ipynb
    """
    pairs = []
    for index, row in enumerate(rows):
        where = _Where(source, index)
        prompt, chosen, rejected = _trl_row(_as_row(row, where), where)
        pairs.append(_course_pair(where, prompt, chosen, rejected, "prompt"))
    return pairs


# --- Detection and the Dataset ------------------------------------------------------------------

_ADAPTERS = {"hh_rlhf": from_hh_rlhf, "ultrafeedback": from_ultrafeedback, "trl": from_trl}


def detect_format(row: Row) -> str:
    """Which format one row is in: "hh_rlhf", "ultrafeedback" or "trl".

    No `prompt` and a `chosen` transcript starting with "Human:" is HH-RLHF; a text `prompt` with
    message-list responses is UltraFeedback; everything else with `chosen`/`rejected` is TRL (whose
    adapter explains what it cannot read). Raises `DataError` naming the missing field.

    Notebook: 02_label_preferences.ipynb
    """
    if not isinstance(row, Mapping):
        raise DataError(f"expected a dict, got {type(row).__name__}")
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError(f"field {field!r}: missing, so the format is unknown (fields {sorted(row)})")
    chosen = row["chosen"]
    if "prompt" not in row:
        hh = isinstance(chosen, str) and chosen.lstrip().startswith("Human:")
        return "hh_rlhf" if hh else "trl"
    if isinstance(row["prompt"], str) and isinstance(chosen, list):
        return "ultrafeedback"
    return "trl"


def to_course_pairs(
    dataset_or_rows: datasets.Dataset | Sequence[Row],
    fmt: str | None = None,
    source: str = "rows",
    errors: str = "raise",
) -> datasets.Dataset:
    """The course's preference pairs as a `datasets.Dataset` with string columns prompt, chosen,
    rejected, from a `datasets.Dataset` or a list of dicts in one of the hub formats.

    `fmt` is one of FORMATS, or None to detect it from row 0. HH-RLHF rows use the default
    `multi_turn="skip"`; call `from_hh_rlhf` directly for another choice. `errors="raise"` stops at
    the first malformed row; `errors="skip"` drops malformed rows (real HH-RLHF has some rows whose
    two replies are identical) and warns with their count and the first reason.

    Notebook: 02_label_preferences.ipynb
    """
    import datasets

    if isinstance(dataset_or_rows, datasets.DatasetDict):
        raise TypeError(f"{source}: got a DatasetDict; pick a split, e.g. load_dataset(..., split='train')")
    if len(dataset_or_rows) == 0:
        raise DataError(f"{source}: no rows")
    if fmt is None:
        first = _as_row(dataset_or_rows[0], _Where(source, 0))
        try:
            fmt = detect_format(first)
        except DataError as err:
            raise DataError(f"{source}, row 0 (0-based), {err}") from None
    elif fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS} or None, got {fmt!r}")
    if errors == "raise":
        pairs = _ADAPTERS[fmt](dataset_or_rows, source=source)
    elif errors == "skip":
        pairs, reasons = [], []
        for i in range(len(dataset_or_rows)):
            try:
                pairs += _ADAPTERS[fmt]([dataset_or_rows[i]], source=f"{source} (row {i} of the input)")
            except DataError as err:
                reasons.append(str(err))
        if reasons:
            warnings.warn(f"{source}: skipped {len(reasons)} malformed row(s); first: {reasons[0]}", stacklevel=2)
    else:
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if not pairs:
        raise DataError(f"{source}: all {len(dataset_or_rows)} rows were skipped ({fmt} format)")
    features = datasets.Features({column: datasets.Value("string") for column in COLUMNS})
    columns = {column: [pair[column] for pair in pairs] for column in COLUMNS}
    return datasets.Dataset.from_dict(columns, features=features)
