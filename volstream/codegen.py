"""Generate the Python protobuf/gRPC code and .pyi stubs from proto/ (one command).

    python -m volstream.codegen          # regenerate volstream/v1/
    python -m volstream.codegen --check  # exit 1 if volstream/v1/ is out of date

Generated files are committed so that an installed package needs no protoc; the check runs
in the test suite so drift fails CI.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "volstream" / "v1"
INIT_TEXT = (
    '"""Generated from proto/volstream/v1 by `python -m volstream.codegen`; do not edit."""\n'
)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "volstream" / "v1").glob("*.proto"))


def generate(out_root: Path) -> None:
    """Write generated modules under out_root/volstream/v1/."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    (out_root / "volstream" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / "volstream" / "v1" / "__init__.py").write_text(INIT_TEXT)


def generated_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix in {".py", ".pyi"}}


def check() -> list[str]:
    """Names of generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "volstream" / "v1"
        names = generated_names(fresh) | (
            generated_names(OUT_PACKAGE) if OUT_PACKAGE.exists() else set()
        )
        return sorted(
            n
            for n in names
            if not (fresh / n).exists()
            or not (OUT_PACKAGE / n).exists()
            or not filecmp.cmp(fresh / n, OUT_PACKAGE / n, shallow=False)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated code drifted")
    ns = parser.parse_args()
    if ns.check:
        stale = check()
        if stale:
            print("generated code out of date: " + ", ".join(stale), file=sys.stderr)
            print("run: python -m volstream.codegen", file=sys.stderr)
            raise SystemExit(1)
        print("generated code is in sync")
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "volstream" / "v1"
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        # Overwrite changed files in place (never remove the folder: other processes import it).
        for src in fresh.iterdir():
            dst = OUT_PACKAGE / src.name
            if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
                shutil.copyfile(src, dst)
        for old in generated_names(OUT_PACKAGE) - generated_names(fresh):
            (OUT_PACKAGE / old).unlink()
    print(f"generated {len(generated_names(OUT_PACKAGE))} files in {OUT_PACKAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
