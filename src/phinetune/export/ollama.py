"""An Ollama Modelfile for an exported GGUF: the chat format as a Go template, stop tokens, sampling defaults.

Ollama renders prompts with Go's text/template, not the Jinja chat template inside the GGUF, so each of
phinetune's chat formats is written here once more as Go, one per template file in phinetune/templates.
tests/test_export_ollama.py renders both for the same conversations and requires identical text.
"""

from __future__ import annotations

from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.models.specs import ModelSpec

# {{- range .Messages }} walks the whole conversation (system, user, assistant turns); the prompt ends with
# the opening of the assistant turn, as apply_chat_template(add_generation_prompt=True) does.
_PHI3 = (
    '{{- range .Messages }}{{ if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}<|{{ .Role }}|>\n'
    "{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"
)
# Phi-3.5's template drops an empty system prompt.
_PHI35 = (
    '{{- range .Messages }}{{ if and (eq .Role "system") (not .Content) }}{{ else if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}'
    "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"
)
# Phi-3-mini-128k has no system role and opens the assistant turn right after each user turn.
_PHI3_128K = (
    '{{- range .Messages }}{{ if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n<|assistant|>\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|end|>\n{{ end }}{{ end }}'
)
_PHI4 = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
_CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"

# Phi-4 (and the reasoning models): ChatML with <|im_sep|> after the role, no newlines.
_PHI4_CHATML = (
    '{{- range .Messages }}{{ if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}'
    "<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>{{ end }}{{ end }}<|im_start|>assistant<|im_sep|>"
)
# phi4-reasoning.jinja also writes the model card's system prompt when a conversation has none; Ollama does that
# through the Modelfile's SYSTEM line (its default system message), so the Go template is Phi-4's.
GO_TEMPLATES = {
    "phi3.jinja": _PHI3,
    "phi3.5.jinja": _PHI35,
    "phi3-128k.jinja": _PHI3_128K,
    "phi4.jinja": _PHI4,
    "chatml.jinja": _CHATML,
    "phi4-chatml.jinja": _PHI4_CHATML,
    "phi4-reasoning.jinja": _PHI4_CHATML,
}

# Ollama's own default temperature is 0.8; an instruction fine-tune answers more faithfully nearer greedy.
# num_ctx: Ollama's default window is shorter than Phi's; 4096 unless the model's own context is shorter.
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "num_ctx": 4096}


def go_template(spec: ModelSpec) -> str:
    if spec.template not in GO_TEMPLATES:
        raise PhinetuneError(
            f"no Ollama template for chat template '{spec.template or 'none'}' (spec {spec.key}); "
            f"Ollama export supports {', '.join(sorted(GO_TEMPLATES))}"
        )
    return GO_TEMPLATES[spec.template]


def modelfile(gguf_name: str, spec: ModelSpec, num_ctx: int | None = None) -> str:
    """The Modelfile text, FROM a GGUF file in the same folder."""
    params = {**SAMPLING, "num_ctx": min(num_ctx or SAMPLING["num_ctx"], SAMPLING["num_ctx"])}
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(spec)}"""']
    if spec.system_prompt_in_template:  # the chat template's own default system message, as Ollama's SYSTEM
        lines.append(f'SYSTEM """{spec.system_prompt}"""')
    lines += [f'PARAMETER stop "{token}"' for token in spec.stop_tokens]
    lines += [f"PARAMETER {key} {value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, spec: ModelSpec, num_ctx: int | None = None) -> Path:
    path = folder / "Modelfile"
    path.write_text(modelfile(gguf_name, spec, num_ctx))
    return path
