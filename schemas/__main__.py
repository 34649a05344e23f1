"""`python -m schemas [--check]`: write (or check) the JSON Schemas in schemas/json/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas import ControlInstance, CreateInstance, InstanceStatus, RunInstance, SendEvent

EXPORTED: dict[str, type[BaseModel]] = {
    "instance.create": CreateInstance,
    "instance.event": SendEvent,
    "instance.control": ControlInstance,
    "run": RunInstance,
    "instance-status": InstanceStatus,
}
OUT_DIR = Path(__file__).parent / "json"


def rendered() -> dict[Path, str]:
    return {
        OUT_DIR / f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2) + "\n"
        for name, model in EXPORTED.items()
    }


def main(argv: list[str]) -> int:
    stale = [
        path for path, text in rendered().items() if not path.exists() or path.read_text() != text
    ]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path} (run `python -m schemas`)", file=sys.stderr)
        return 1 if stale else 0
    OUT_DIR.mkdir(exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
