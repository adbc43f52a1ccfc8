"""The typed record at the boundary of bmc_data, and the column names every stage agrees on.

`bmc_train` reads these names; nothing in `bmc_data` imports from `bmc_train`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- column names of a bridged dataset -------------------------------------------------------
PROMPT = "prompt"
CHOSEN = "chosen"  # ỹ_w when bridged, else the original winner
REJECTED = "rejected"  # y_l
ORIGINAL_CHOSEN = "original_chosen"  # y_w
ID = "id"
TASK = "task"
ANSWER = "answer"  # ground-truth final answer (QA/math)
STATUS = "bmc_status"
REASON = "bmc_reason"
PROMPT_VERSION = "bmc_prompt_version"
PROVIDER = "bmc_provider"
MODEL = "bmc_model"

# per-response-token masks (one bool per completion token as bmc_train tokenizes it)
CHOSEN_DIFF_MASK = "chosen_diff_mask"
REJECTED_DIFF_MASK = "rejected_diff_mask"
MASK_TOKENIZER = "bmc_mask_tokenizer"  # name_or_path of the tokenizer the masks fit
MASK_TOKENIZER_HASH = "bmc_mask_tokenizer_hash"  # hash of its vocabulary + chat template

BRIDGED_COLUMNS = (
    PROMPT, CHOSEN, REJECTED, ORIGINAL_CHOSEN, STATUS, REASON, PROMPT_VERSION, PROVIDER, MODEL,
)
MASK_COLUMNS = (CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK, MASK_TOKENIZER, MASK_TOKENIZER_HASH)


class Status(str, Enum):
    BRIDGED = "bridged"  # chosen is the pseudo-winning response ỹ_w
    FILTERED = "filtered"  # the LLM judged y_l already good enough (QA/math): not a useful pair
    FAILED = "failed"  # no usable ỹ_w (unparsable reply, wrong final answer, provider error)


class Task(str, Enum):
    QA = "qa"
    MATH = "math"
    INSTRUCTION = "instruction"

    @property
    def has_ground_truth(self) -> bool:
        return self in (Task.QA, Task.MATH)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


Prompt = Union[str, list[ChatMessage]]


class PreferencePair(BaseModel):
    """One preference pair (x, y_w, y_l).

    `prompt` is plain text or a chat transcript; `chosen`/`rejected` are the assistant replies as
    text. `answer` is the known final answer for QA/math, used to check the pseudo-winning reply.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    chosen: str
    rejected: str
    id: str | None = None
    task: Task | None = None
    answer: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Prompt) -> Prompt:
        if isinstance(value, str) and not value.strip():
            raise ValueError("prompt is empty")
        if isinstance(value, list) and not value:
            raise ValueError("prompt message list is empty")
        return value

    @field_validator("chosen", "rejected")
    @classmethod
    def _response_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("response is empty")
        return value

    @property
    def is_conversational(self) -> bool:
        return isinstance(self.prompt, list)

    def prompt_messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a plain prompt becomes one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.prompt]

    def prompt_text(self) -> str:
        """The prompt as one string, for LLM instructions that quote it."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n\n".join(f"[{m.role}]\n{m.content}" for m in self.prompt)


_QUOTED = re.compile(r"(?<!\w)'(?:[^']|'(?=\w))*'(?!\w)")


def reason_group(reason: str) -> str:
    """A `bmc_reason` with its row-specific quoted values (answers, server messages) elided, so that the same
    cause counts once in summaries and dataset cards. A quoted value starts and ends at a word boundary and may hold
    apostrophes inside words (`'it's ethics'` is one value, not `'it'` + a fragment)."""
    return _QUOTED.sub("'…'", reason)


def response_text(value: Any) -> str:
    """Text of a response stored either as a string or as TRL conversational messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(m["content"] for m in value if m.get("role") == "assistant")
    raise TypeError(f"expected a string or a list of chat messages, got {type(value).__name__}")
