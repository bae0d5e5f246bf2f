"""Generate the Python stubs of `protos/` into `waveform/service/_proto/`.

The stubs are committed (so a fresh install needs no code generator);
`tests/test_proto_stubs.py` regenerates them into a temporary folder and fails
when they drift from `protos/`. Run ``python -m waveform.service._codegen`` after
changing a `.proto` file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent / "_proto"


def generate(out: Path = OUT) -> list[Path]:
    """Write the stubs of every .proto under `protos/` into ``out``."""
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
                        f"--pyi_out={out}", f"--grpc_python_out={out}", *sources])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit status {code}")
    written = sorted(p for p in out.rglob("*.py*") if p.suffix in (".py", ".pyi"))
    for path in written:
        # Generated modules import each other as top-level `waveform.v1...`;
        # make them relative to this package.
        text = path.read_text()
        text = re.sub(r"^from waveform\.v1 import",
                      "from waveform.service._proto.waveform.v1 import", text, flags=re.M)
        path.write_text(text)
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return written


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(ROOT))
    sys.exit(0)
