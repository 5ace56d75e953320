#!/usr/bin/env bash
# The installed package is the product: build the wheel, install it with its dependencies into a fresh venv,
# and use it as a new user would, from an empty directory outside the checkout (no PYTHONPATH, no recipes/ at
# hand): list and show recipes, build shards with ssl-vit-shards, pretrain by recipe name, a ViT-B/16 dry run,
# and the quick demo with its artefacts (the README's "From the wheel"). Part of `make test` (after pytest); prints
# one line per check and a closing count. Packages come as pip is configured: torch from the local CPU wheel, the
# rest from the local indexes or PyPI (the [demo] extra's are all in the local index; webdataset, braceexpand and
# simplejpeg are in no local set, so a fresh install needs PyPI).
#
#   bash tests/install_test.sh            # PY=python3.11 to choose the interpreter of the fresh venv
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
WORK="$(mktemp -d -t ssl_vit_install.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # the installed package, not the checkout
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
passed=0
start=$SECONDS

check() {  # check NAME COMMAND...: run it (output to a log), fail loudly with the log's end
    local name="$1"; shift
    local t0=$SECONDS
    if ! "$@" >"$WORK/last.log" 2>&1; then
        echo "FAILED: $name"; tail -n 30 "$WORK/last.log"
        echo "0 passed, 1 failed"
        exit 1
    fi
    passed=$((passed + 1))
    echo "ok  $name ($((SECONDS - t0)) s)"
}

expect() {  # expect NAME FILE PATTERN: FILE holds a line matching the extended regex PATTERN
    if ! grep -Eq -- "$3" "$2"; then
        echo "FAILED: $1: no line matches '$3' in $2:"; tail -n 30 "$2"
        echo "$passed passed, 1 failed"
        exit 1
    fi
    passed=$((passed + 1))
    echo "ok  $1"
}

# 1. The wheel, built as pip builds it (isolated, from pyproject.toml + setup.py).
check "build the wheel" "$PY" -m pip wheel --no-deps -q -w "$WORK/dist" "$ROOT"
WHEEL="$(ls "$WORK"/dist/ssl_vit-*.whl)"
"$PY" -m zipfile -l "$WHEEL" >"$WORK/wheel.txt"
expect "the wheel ships the recipes" "$WORK/wheel.txt" "^ssl_vit/recipes/pretrain/smoke.yaml "
expect "the wheel ships the accelerate configs" "$WORK/wheel.txt" "^ssl_vit/recipes/accelerate/gpu_8.yaml "
expect "the wheel ships its licence" "$WORK/wheel.txt" "^ssl_vit-[^/]+\.dist-info/licenses/LICENSE "
expect "the wheel says it is typed" "$WORK/wheel.txt" "^ssl_vit/py.typed "

# 2. A fresh venv: torch first (this exact version is a local CPU wheel; any other spec pulls CUDA gigabytes).
check "fresh venv" "$PY" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
# --no-compile: no bytecode for the thousands of modules nothing here imports (torch's alone took most of the time).
check "install torch==2.13.0" "$BIN/pip" install -q --no-compile torch==2.13.0
check "install the wheel with its dependencies ([demo])" "$BIN/pip" install -q --no-compile "$WHEEL[demo]"
check "pip check" "$BIN/pip" check

# 3. A user's empty directory outside the checkout.
mkdir "$WORK/user"
cd "$WORK/user"
export PATH="$BIN:$PATH"
check "ssl-vit --version" ssl-vit --version
expect "the installed copy runs" "$WORK/last.log" "^ssl-vit [0-9]"
check "imported from the venv" python -c "import ssl_vit, sys; sys.exit(not ssl_vit.__file__.startswith('$WORK/venv/'))"
check "ssl-vit recipes" ssl-vit recipes
expect "recipes listed with their first line" "$WORK/last.log" "^pretrain/smoke +Smoke run: "
check "ssl-vit recipes show accelerate/gpu_8" sh -c "ssl-vit recipes show accelerate/gpu_8 > gpu_8.yaml"
expect "an accelerate config to copy" gpu_8.yaml "^num_processes: 8$"

# Images → shards with ssl-vit-shards: two classes of two-colour 36px PNGs.
check "write an image folder" python - <<'EOF'
import random
from pathlib import Path
from PIL import Image
rng = random.Random(0)
for label in ("cats", "dogs"):
    Path("images", label).mkdir(parents=True)
    for i in range(16):
        img = Image.new("RGB", (36, 36), tuple(rng.randrange(256) for _ in range(3)))
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (18, 0, 36, 36))
        img.save(f"images/{label}/{i:02d}.png")
EOF
check "ssl-vit-shards build" ssl-vit-shards build images shards --split train --max-count 16
check "ssl-vit-shards verify" ssl-vit-shards verify shards

check "ssl-vit pretrain --config pretrain/smoke (by name)" ssl-vit pretrain --config pretrain/smoke \
    data.train=shards:train output_dir=run train.total_steps=4 train.log_every=2 train.checkpoint_every=4 \
    optim.warmup_steps=1
cp "$WORK/last.log" "$WORK/pretrain.log"
expect "pretraining finished" "$WORK/pretrain.log" "^done: step 4, checkpoint "
check "its progress in a log is lines, not redrawn bars" python -c \
    "import sys; log = open('$WORK/pretrain.log', 'rb').read(); sys.exit(b'\\r' in log or b'train: 100% 4/4 step' not in log)"
expect "a checkpoint was written" run/checkpoints/latest "step_0000004"

check "ssl-vit pretrain --config vit_b16_mean_color --dry-run" ssl-vit pretrain --config vit_b16_mean_color \
    data.train=shards:train --dry-run --processes 8
expect "dry run: the data" "$WORK/last.log" "^data +shards:train: 32 images in 2 shards \(16 per shard, .*2 classes: cats, dogs$"
expect "dry run: the batch arithmetic" "$WORK/last.log" "^batch +128 per device × 8 processes × 4 accumulation = 4,096 images per step$"
expect "dry run: the memory estimate" "$WORK/last.log" "^memory +vit_base_patch16 .* peak [0-9.]+ GiB per device$"
check "the dry run wrote nothing" test ! -e runs/vit_b16_mean_color

# The wheel's quick start, as the README's "From the wheel" gives it: the [demo] extra installed above, the
# demo in a folder of the user's; it says where its report is, its report's links all resolve, and it writes
# nothing outside --workdir (no checkout, no recipes/ here: only what the wheel ships). The grey digits: they
# ship inside scikit-learn, where the colour default needs two Debian packages (tests/test_demo_emoji.py).
ls -A >"$WORK/before-demo.txt"
check "ssl-vit demo --quick --data digits" ssl-vit demo --quick --data digits --workdir demo
cp "$WORK/last.log" "$WORK/demo.log"
expect "the demo names its report" "$WORK/demo.log" "^report: demo/report\.md$"
expect "the demo names its summary" "$WORK/demo.log" "^summary: demo/summary\.json$"
expect "the demo's report" demo/report.md "10-shot: pretrained [0-9.]+% vs random init [0-9.]+%"
check "the demo's artefacts" python - <<'EOF'
import json, re, sys
from pathlib import Path
demo = Path("demo")
made = ["report.md", "summary.json", "fewshot.png", "shards/_info.json", "pretrain/config.yaml",
        "pretrain/metrics.jsonl", "pretrain/checkpoints/latest", "eval/comparison.md", "analysis/analysis.md",
        "analysis/figure7.png", "analysis/masked_prediction.png"]
missing = [name for name in made if not (demo / name).is_file()]
latest = (demo / "pretrain/checkpoints/latest").read_text().strip() if not missing else ""
if latest and not (demo / "pretrain/checkpoints" / latest).is_dir():
    missing.append(f"pretrain/checkpoints/{latest} (named by latest)")
for page in ("report.md", "analysis/analysis.md"):
    if (demo / page).is_file():
        for link in re.findall(r"\]\(([^)\s#]+)\)", (demo / page).read_text()):
            if "://" not in link and not ((demo / page).parent / link).exists():
                missing.append(f"{link} (linked from {page})")
summary = json.loads((demo / "summary.json").read_text()) if (demo / "summary.json").is_file() else {}
for arm in ("pretrained", "random_init"):
    if not isinstance(summary.get(arm, {}).get("fewshot", {}).get("10"), float):
        missing.append(f"summary.json: {arm}.fewshot.10")
print("\n".join(missing) or "all there")
sys.exit(bool(missing))
EOF
check "the demo wrote nothing outside --workdir" sh -c "ls -A | grep -vx demo | diff '$WORK/before-demo.txt' -"

echo "install test: $passed passed, 0 failed in $((SECONDS - start)) s"
