#!/usr/bin/env bash
# Fail if `nbdev-export` or `nbdev-clean` would change the working tree: the notebooks are the source,
# synthface_nb/ is exported from them, and both must agree (and notebooks be clean) in every commit.
set -euo pipefail
bin=${VENV:-.venv}/bin
snapshot() { find synthface_nb nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }
before=$(snapshot)
"$bin/nbdev-export" >/dev/null
"$bin/nbdev-clean" >/dev/null
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "nbdev-export / nbdev-clean changed these files (run them and commit the result):" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u >&2
  exit 1
fi
echo "notebooks and synthface_nb/ are in sync and clean"
