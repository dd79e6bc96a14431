"""`blasst calibrate ...` / `python -m blasst calibrate ...`.

calibrate is the only Python command. The project's C++ command-line tool is also called
`blasst` (run, demo, bench); other commands are handed to it when it is on PATH, so installing
the Python package does not hide it.
"""

import os
import shutil
import sys


def _native_cli():
    """Another `blasst` executable on PATH than this script (the C++ tool), or None."""
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        cand = shutil.which("blasst", path=d) if d else None
        if cand and os.path.realpath(cand) != me:
            with open(cand, "rb") as f:
                if f.read(2) != b"#!":  # a compiled executable, not a Python entry script
                    return cand
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "calibrate":
        from .calibrate.cli import main as calibrate_main

        return calibrate_main(argv[1:])
    native = _native_cli()
    if argv and argv[0] not in ("-h", "--help") and native:
        os.execv(native, [native] + argv)
    print("usage: blasst calibrate [options]   (blasst calibrate --help)\n"
          "The commands run/demo/bench belong to the C++ blasst tool" + ("" if native else " (not found on PATH)"),
          file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
    return 0 if argv and argv[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
