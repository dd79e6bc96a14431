"""Which source a benchmark row came from: $BLASST_COMMIT when set (a copy of the tree whose git
metadata is missing or stale, as on a GPU machine that receives the working tree), else git's short
HEAD of this checkout, else "unknown"."""
import os
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def source_commit() -> str:
    if os.environ.get("BLASST_COMMIT"):
        return os.environ["BLASST_COMMIT"]
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
