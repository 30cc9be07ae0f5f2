"""Pack the small real files the tests use into tests/fixtures/realdata.tar.xz, with their SOURCE notes.

    python scripts/pack_realdata_fixtures.py [REALDATA]     (default: $PHINETUNE_REALDATA or ../shared/realdata)

The real Phi tokenizers (Phi-2, Phi-3-mini-4k, Phi-3-mini-128k, Phi-4-mini), the Phi-3.5-mini chat template,
the public model configs and the small data sets: every file under the same path as in the realdata folder,
so tests/conftest.py's `realdata(...)` finds it in the archive on a fresh clone. Only what a test loads is
packed (Phi-2's tokenizer.json, not the vocab.json/merges.txt that repeat it). The large eval sets stay out.
The archive is deterministic (sorted names, no times or owners), so packing again changes nothing in git.
"""

from __future__ import annotations

import io
import lzma
import os
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "tests" / "fixtures" / "realdata.tar.xz"
NOTES = ROOT / "tests" / "fixtures" / "realdata.SOURCE.txt"

FILES = {  # folder -> files; each folder's SOURCE.txt (repository, path, commit, licence per file) goes along
    "phi2_tokenizer": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"],
    "phi3-mini-4k-instruct_tokenizer": ["tokenizer.json", "tokenizer_config.json"],
    "phi3-mini-128k-instruct_tokenizer": ["tokenizer.json", "tokenizer_config.json"],
    "phi4-mini-instruct": [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "config.json",
        "generation_config.json",
    ],
    "configs": [
        "microsoft-Phi-3.5-mini-instruct.chat_template.jinja",
        "phi-2_config.json",
        "phi-4-mini-instruct_config.json",
        "phi-3-mini-4k-instruct_config.RECONSTRUCTED.json",
        "phi-3.5-mini-instruct_config.RECONSTRUCTED.json",
    ],
    "datasets/openassistant-guanaco": ["openassistant_best_replies_eval.jsonl"],
    "datasets/riddles_crawsome": ["riddles.csv"],
    "datasets/phi3cookbook_mlx": ["valid.jsonl"],
    "datasets/huanhuan": ["huanhuan-100.json"],
}

HEADER = """Real public files for the tests, packed in realdata.tar.xz by scripts/pack_realdata_fixtures.py from the
development workspace's realdata folder, under the same paths; tests/conftest.py unpacks the archive once per test
process. The tokenizer files, the Phi-3.5-mini chat template and the model configs are copies of Microsoft's
MIT-licensed Phi files (the Hugging Face microsoft/* model repositories), taken from the public repositories named
per file below (two configs re-serialized from code, as their notes say). The data sets keep their own licences:
openassistant-guanaco Apache-2.0, Phi-3CookBook MIT, crawsome/riddles public domain, self-llm huanhuan Apache-2.0.
Each folder's SOURCE.txt (also in the archive):
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(realdata: Path) -> None:
    notes = [HEADER]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, names in FILES.items():
            source = (realdata / folder / "SOURCE.txt").read_text()
            notes.append(f"\n== {folder}/ ({', '.join(names)})\n{source.rstrip()}\n")
            for name in sorted(names) + ["SOURCE.txt"]:
                _add(tar, f"{folder}/{name}", (realdata / folder / name).read_bytes())
    ARCHIVE.write_bytes(lzma.compress(raw.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    NOTES.write_text("".join(notes))
    print(f"{ARCHIVE}: {ARCHIVE.stat().st_size / 2**20:.2f} MiB ({len(raw.getvalue()) / 2**20:.1f} MiB unpacked)")


if __name__ == "__main__":
    default = os.environ.get("PHINETUNE_REALDATA") or str(ROOT.parent / "shared" / "realdata")
    pack(Path(sys.argv[1] if len(sys.argv) > 1 else default))
