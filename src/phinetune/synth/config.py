"""The typed synth config: seeds, teacher, sampling and an ordered mapping of named stages.

Stages are a mapping (name -> stage) rather than a list so dotted overrides such as
`stages.riddles.calls=5` work exactly like the run config's. Unknown keys are rejected with a
did-you-mean hint; prompt placeholders and stage order are checked before any teacher call is paid for.
"""

from __future__ import annotations

import difflib
import string
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from phinetune.config.explain import explain, origins_of
from phinetune.config.load import apply_override, read_yaml
from phinetune.errors import ConfigError
from phinetune.teachers.config import RequestSampling, TeacherConfig
from phinetune.teachers.refusals import REFUSALS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SeedsConfig(_Strict):
    path: str = Field(
        ...,
        description="Seed file: any file the data readers accept (.jsonl/.json/.csv/.parquet, a folder, or builtin:riddles).",
    )
    field: str = Field(
        "auto",
        description="Column or key holding the seed text (e.g. QUESTIONS, instruction); auto: the first user turn of a messages row, else one of question/instruction/prompt/text.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N seeds.")


class SamplingOverride(_Strict):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)


class ExpandStage(_Strict):
    kind: Literal["expand"] = "expand"
    prompt: str = Field(
        ...,
        description="Prompt with {examples} (the sampled seeds, one per paragraph) and optionally {n} (how many were shown).",
    )
    calls: int = Field(..., ge=1, description="Teacher calls to make; each sees a fresh random sample of seeds.")
    examples: int = Field(10, ge=1, description="Seeds shown per call.")
    keep_seeds: bool = Field(
        False, description="Also keep the seeds themselves as questions (the riddles recipe keeps only new ones)."
    )
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)


class CleanStage(_Strict):
    kind: Literal["clean"] = "clean"
    min_chars: int = Field(15, ge=0, description="Drop questions shorter than this.")
    max_chars: int = Field(400, ge=1, description="Drop questions longer than this.")
    require_question: bool = Field(True, description="Drop lines without a question mark (headers, chatter, answers).")
    refusals: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="Phrases (whole words, case-insensitive) that mark a refusal or meta-talk when found in the first 80 characters (teacher turns are checked for the refusal phrases only).",
    )
    near_duplicate: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Jaccard similarity of character 5-gram sets at or above which two questions are near-duplicates.",
    )
    against_seeds: bool = Field(True, description="Also drop synthetic questions that duplicate a seed.")
    max_items: int | None = Field(
        None, ge=1, description="Keep at most this many questions after cleaning (in id order)."
    )


class AssistantStage(_Strict):
    kind: Literal["assistant"] = "assistant"
    prompt: str | None = Field(
        None,
        description="Template for the last user turn as sent to the teacher, with {message}; the stored conversation keeps the plain turn. None: send the conversation as is.",
    )
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)


class UserStage(_Strict):
    kind: Literal["user"] = "user"
    prompt: str = Field(
        ...,
        description="Prompt asking the teacher to write the next user turn, with {conversation} (the turns so far as 'user: ...' / 'assistant: ...').",
    )
    max_chars: int = Field(300, ge=1, description="Drop follow-ups longer than this.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)


class PairsStage(_Strict):
    kind: Literal["pairs"] = "pairs"
    prompt: str | None = Field(
        None,
        description="As for an assistant stage, with {message}; two replies are sampled per conversation (different seeds).",
    )
    sampling: SamplingOverride = Field(default_factory=lambda: SamplingOverride(temperature=1.0))


JUDGE_PROMPT = """Here is a question and two replies.

Question:
{question}

Reply A:
{a}

Reply B:
{b}

Which reply is better: more correct, clearer and more helpful? Answer with the single letter A or B."""


class JudgeStage(_Strict):
    kind: Literal["judge"] = "judge"
    prompt: str = Field(
        JUDGE_PROMPT,
        description="Prompt with {question}, {a} and {b}; the answer must name A or B. The two replies are shown in an order set per conversation by the seed, so a judge that favours a position does not favour a sample.",
    )
    sampling: SamplingOverride = Field(default_factory=lambda: SamplingOverride(temperature=0.0))


Stage = Annotated[
    ExpandStage | CleanStage | AssistantStage | UserStage | PairsStage | JudgeStage, Field(discriminator="kind")
]
STAGE_TYPES: dict[str, type[BaseModel]] = {
    "expand": ExpandStage,
    "clean": CleanStage,
    "assistant": AssistantStage,
    "user": UserStage,
    "pairs": PairsStage,
    "judge": JudgeStage,
}
PLACEHOLDERS = {
    "expand": ({"examples"}, {"examples", "n"}),
    "assistant": ({"message"}, {"message"}),
    "user": ({"conversation"}, {"conversation"}),
    "pairs": ({"message"}, {"message"}),
    "judge": ({"question", "a", "b"}, {"question", "a", "b"}),
}
DEFAULT_REFUSALS = REFUSALS + ("here are", "here is", "sure, here")  # for questions, meta-talk lines too


class OutputConfig(_Strict):
    dir: str = Field(
        "synth/out",
        description="Folder for journal.jsonl, conversations.jsonl, stats.json and clean_report.json. Re-running with the same folder resumes.",
    )


class SynthConfig(_Strict):
    seeds: SeedsConfig
    teacher: TeacherConfig
    sampling: RequestSampling = Field(default_factory=RequestSampling)
    stages: dict[str, Stage] = Field(
        ...,
        description="Ordered stages: expand?, clean?, then turns alternating assistant/user, ending with assistant.",
    )
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = Field(0, description="Seed for which seeds each expand call sees and for sampling.")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        _check_order(self.stages)
        for name, stage in self.stages.items():
            _check_placeholders(name, stage)
        return self

    def sampling_for(self, stage) -> RequestSampling:
        return self.sampling.model_copy(update=stage.sampling.model_dump(exclude_none=True))


def _check_order(stages: dict) -> None:
    kinds = [s.kind for s in stages.values()]
    if "pairs" in kinds or "judge" in kinds:
        # A preference recipe: the last reply is sampled twice and judged; the stages before are as usual.
        if kinds[-2:] != ["pairs", "judge"] or kinds.count("pairs") + kinds.count("judge") != 2:
            raise ValueError(
                f"a preference recipe ends with one pairs stage then one judge stage (order given: {', '.join(kinds)})"
            )
        kinds = kinds[:-2] + ["assistant"]
    if not kinds:
        raise ValueError("stages is empty; add at least one assistant stage")
    turns = [k for k in kinds if k in ("assistant", "user")]
    first_turn = next((i for i, k in enumerate(kinds) if k in ("assistant", "user")), len(kinds))
    if kinds.count("expand") > 1 or kinds.count("clean") > 1:
        raise ValueError("at most one expand stage and one clean stage are allowed")
    if any(k in ("expand", "clean") for k in kinds[first_turn:]):
        raise ValueError(f"expand and clean stages must come before the turn stages (order given: {', '.join(kinds)})")
    if "expand" in kinds and "clean" in kinds and kinds.index("clean") < kinds.index("expand"):
        raise ValueError("the clean stage must come after the expand stage")
    expected = ["assistant" if i % 2 == 0 else "user" for i in range(len(turns))]
    if turns != expected or not turns or turns[-1] != "assistant":
        raise ValueError(
            f"turn stages must alternate assistant, user, assistant, ... and end with assistant so every conversation trains; got {turns}"
        )


def _check_placeholders(name: str, stage) -> None:
    if stage.kind not in PLACEHOLDERS or getattr(stage, "prompt", None) is None:
        return
    required, allowed = PLACEHOLDERS[stage.kind]
    try:
        found = {f for _, f, _, _ in string.Formatter().parse(stage.prompt) if f is not None}
    except ValueError as exc:
        raise ValueError(f"stages.{name}.prompt: {exc} (write literal braces as {{{{ and }}}})") from None
    if found - allowed:
        raise ValueError(
            f"stages.{name}.prompt: unknown placeholder(s) {sorted(found - allowed)}; allowed: {sorted(allowed)} (write literal braces as {{{{ and }}}})"
        )
    if required - found:
        raise ValueError(f"stages.{name}.prompt must contain {', '.join('{' + r + '}' for r in sorted(required))}")


# --- loading ---------------------------------------------------------------------------------------


def load_synth_config(path: str | Path, overrides: Iterable[str] = ()) -> SynthConfig:
    """Read, override and validate; errors name `FILE:LINE` or `command line (key=value)` as the run config's do."""
    raw = read_yaml(Path(path), "synth config", "configs/synth/riddles.yaml", "seeds, teacher, stages")
    for item in overrides:
        apply_override(raw, item)
    try:
        return SynthConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            explain(
                exc,
                str(path),
                origins_of(Path(path), overrides),
                hint=_closest,
                key_path=_without_tag,
                tags=list(STAGE_TYPES),
            )
        ) from None


def _without_tag(loc: tuple) -> tuple:
    """pydantic's loc inside a stage carries the stage's kind (stages.NAME.KIND.key): the key as written has none."""
    return loc[:2] + loc[3:] if loc[:1] == ("stages",) and len(loc) > 2 and loc[2] in STAGE_TYPES else loc


def _closest(loc: tuple[Any, ...]) -> str | None:
    """Walk the schema along `loc` (through the stages mapping and its kind tag) to suggest the nearest key."""
    model: Any = SynthConfig
    shown: list[str] = []
    parts = list(loc[:-1])
    while parts:
        part = str(parts.pop(0))
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        shown.append(part)
        model = field.annotation
        if typing.get_origin(model) is dict:  # stages: <name> then the discriminator tag
            shown.append(str(parts.pop(0)))
            model = STAGE_TYPES.get(str(parts.pop(0))) if parts else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return ".".join(shown + match) if match else None
