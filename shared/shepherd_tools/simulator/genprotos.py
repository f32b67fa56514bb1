"""`make protos`: regenerates simulator/pb/ from the luci-go .proto files in simulator/protos/.

protoc names Python modules after the import paths (`go.chromium.org/luci/...`), which are not
importable as they are, so the generated files go under `shepherd_tools.simulator.pb` and their
imports are rewritten to match. The descriptors keep the original file names, so the messages
are exactly Buildbucket's. google/api and google/rpc come from googleapis-common-protos,
google/protobuf from grpcio-tools.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import google.api
from grpc_tools import protoc

HERE = Path(__file__).parent
PROTOS = HERE / "protos"
OUT = HERE / "pb"
ORIGIN = "go/chromium/org/luci"  # where protoc puts go.chromium.org/luci/...
PACKAGE = "shepherd_tools.simulator.pb"
_IMPORT = re.compile(r"^from go\.chromium\.org\.luci((?:\.\w+)*) import ", re.MULTILINE)


def main(out: Path = OUT) -> int:
    googleapis = Path(google.api.__path__[0]).parent.parent
    builtin = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{googleapis}", f"-I{builtin}", f"--python_out={tmp}"]
        if protoc.main([*args, *sources]) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        generated = Path(tmp, ORIGIN)
        for source in sorted(generated.rglob("*_pb2.py")):
            target = out / source.relative_to(generated)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT.sub(lambda m: f"from {PACKAGE}{m[1]} import ", source.read_text())
            target.write_text(text)
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    print(f"generated {len(list(out.rglob('*_pb2.py')))} modules into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
