"""Regenerate the Python wire types and their type stubs from protos/.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: src)

The generated modules follow the proto packages: meterline.rating.v1 becomes
src/meterline/rating/v1/. They are committed; tests/lint/test_static_checks.py fails
when this script would change them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WIRE_PACKAGES = ("rating", "billing", "auth", "service")


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2_grpc.py and their .pyi stubs under out_dir; return them."""
    sources = sorted(PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    # protoc finds the mypy-protobuf plugins by name on PATH: prefer the ones installed
    # beside this interpreter, so an un-activated virtualenv works too.
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(source.relative_to(PROTOS)) for source in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in WIRE_PACKAGES:
        for folder in (out_dir / "meterline" / package, out_dir / "meterline" / package / "v1"):
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated wire types (see protos/)."""\n')
    return sorted(
        path
        for package in WIRE_PACKAGES
        for path in (out_dir / "meterline" / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    for written in generate(target):
        print(written.relative_to(target))
