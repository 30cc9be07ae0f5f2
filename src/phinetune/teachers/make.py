"""The teacher a TeacherConfig asks for."""

from __future__ import annotations

from phinetune.teachers.config import TeacherConfig


def make_teacher(cfg: TeacherConfig, names: dict | None = None):
    """`names`: how the caller's user spells the settings (default: synth's teacher.* keys)."""
    if cfg.kind == "local":
        from phinetune.teachers.local import LocalTeacher

        return LocalTeacher(cfg)
    from phinetune.teachers.endpoint import OpenAITeacher  # imports the openai SDK: only when it is the one asked for

    return OpenAITeacher(cfg, names)
