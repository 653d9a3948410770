"""Generates the protobuf code from proto/ while the package is built, so that
``pip install .`` from a clean clone needs no ``make`` first. Everything else about
the package is in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTO_ROOT = ROOT / "proto"


def generate(out: Path) -> None:
    """grpc_tools.protoc over every .proto file, writing the Python modules under ``out``."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in sorted(PROTO_ROOT.rglob("*.proto")):
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", str(proto)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildWithProto(build_py):
    """build_py that also writes the generated code: into the build tree, and into
    proto/ itself for an editable install (which imports from the source tree)."""

    def run(self) -> None:
        super().run()
        generate(PROTO_ROOT if self.editable_mode else Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithProto})
