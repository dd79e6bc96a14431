#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, run `blasst demo`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" -DBLASST_BUILD_TESTS=OFF >/dev/null
exec "${BLASST_BUILD_DIR:-$root/build}/tools/blasst" demo "$@"
