#!/usr/bin/env bash
# Create the peer environment `.venv-peer` that runs CLIP_benchmark (PyPI clip-benchmark) beside pisweep.
#
# Why a separate environment: the agreement test and the benchmarks compare pisweep with the real
# CLIP_benchmark 1.6.2, which needs numpy < 2.4 (under numpy 2.4 its accuracy() raises a TypeError after
# all the work is done) and `requests` (imported, not declared), while pisweep's own venv runs numpy 2.4.
#
# How: a plain `python -m venv .venv-peer` holding clip-benchmark==1.6.2 (installed --no-deps: its
# declared deps would pull `transformers` and a second torch) and the few packages it really imports
# (numpy<2.4, requests, tqdm, scikit-learn, pycocoevalcap), plus pandas (open_clip_train imports it,
# for the training benchmark). torch, torchvision, open_clip and webdataset are NOT installed a second
# time (5.6 GB): a file `zz-pisweep-main.pth` in the peer's site-packages lists the main venv's
# site-packages. Python appends the lines of .pth files to sys.path *after* the directory that holds
# them, so every package of the peer (its numpy first) wins over the main venv's copy, and the main
# venv's own .pth files (pisweep's editable install) are not processed: pisweep is not importable there.
# `--system-site-packages` cannot do this: it exposes the base interpreter's packages, not a venv's.
# The .pth file is written after pip has finished, so pip never sees (or tries to replace) main's packages.
#
# Idempotent and quick when the environment is present and matches this script's pins; --force rebuilds.
# Usage: benchmarks/peer_env.sh [--force]     (env: PISWEEP_MAIN_VENV, PISWEEP_PEER_VENV to relocate)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN="${PISWEEP_MAIN_VENV:-$ROOT/.venv}"
PEER="${PISWEEP_PEER_VENV:-$ROOT/.venv-peer}"
PINS=("numpy>=2,<2.4" "requests>=2" "tqdm>=4" "scikit-learn>=1.0,<2" "pycocoevalcap" "pandas>=2")
PEER_PKG="clip-benchmark==1.6.2"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

say() { echo "peer_env: $*"; }

if [[ ! -x "$MAIN/bin/python" ]]; then
    say "main venv not found at $MAIN (create it first: python -m venv .venv && .venv/bin/pip install -e .)" >&2
    exit 1
fi
MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
STAMP="$PEER_PKG ${PINS[*]} main=$MAIN_SITE"

check() {  # $1 = quick|full. The peer's numpy must be its own (<2.4); full: CLIP_benchmark's CLI imports
    (cd / && "$PEER/bin/python" - "$PEER" "$1") <<'EOF'
import importlib.util, sys, numpy
from importlib.metadata import version
peer, mode = sys.argv[1], sys.argv[2]
assert numpy.__file__.startswith(peer), f"numpy comes from {numpy.__file__}, not from {peer}"
assert tuple(int(x) for x in numpy.__version__.split(".")[:2]) < (2, 4), numpy.__version__
for name in ("clip_benchmark", "torch", "torchvision", "open_clip", "webdataset", "sklearn", "pandas", "requests"):
    assert importlib.util.find_spec(name) is not None, f"{name} is not importable in {peer}"
assert importlib.util.find_spec("pisweep") is None, "pisweep must not be importable in the peer environment"
if mode == "full":
    import clip_benchmark.cli, open_clip, torch, webdataset, pandas, sklearn  # noqa: F401
print(f"peer_env: ok ({mode} check): clip-benchmark {version('clip-benchmark')}, numpy {numpy.__version__} (own), "
      f"torch {version('torch')} and open_clip {version('open_clip_torch')} (from the main venv)")
EOF
}

if [[ $FORCE == 0 && -f "$PEER/pisweep-peer.stamp" && "$(cat "$PEER/pisweep-peer.stamp")" == "$STAMP" ]]; then
    say "present at $PEER, pins unchanged: nothing to do"
    check quick
    exit 0
fi

if [[ -d "$PEER" ]]; then
    say "removing the stale or incomplete environment at $PEER"
    rm -rf "$PEER"
fi
"$MAIN/bin/python" -c 'import torch, torchvision, open_clip, webdataset' 2>/dev/null || {
    say "the main venv lacks torch/torchvision/open_clip/webdataset (install pisweep into $MAIN first)" >&2
    exit 1
}
say "creating $PEER (python: $("$MAIN/bin/python" -c 'import sys; print(sys.base_prefix)'))"
"$MAIN/bin/python" -m venv "$PEER"
say "installing ${PINS[*]}"
"$PEER/bin/python" -m pip install --quiet "${PINS[@]}" 2> >(grep -v "is neither a file nor a directory" >&2)
say "installing $PEER_PKG --no-deps"
"$PEER/bin/python" -m pip install --quiet --no-deps "$PEER_PKG" 2> >(grep -v "is neither a file nor a directory" >&2)
PEER_SITE="$("$PEER/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$MAIN_SITE" > "$PEER_SITE/zz-pisweep-main.pth"
say "wrote $PEER_SITE/zz-pisweep-main.pth -> $MAIN_SITE (torch, torchvision, open_clip, webdataset from there)"
check full
echo "$STAMP" > "$PEER/pisweep-peer.stamp"
say "done"
