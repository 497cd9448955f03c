#!/usr/bin/env bash
# The device daemon on a real ARM userland (Debian 12 bookworm), emulated with qemu-user:
#   arm64 (default): Raspberry Pi 4/5 with 64-bit Pi OS, Jetson-class boards;
#   armhf: 32-bit Pi OS (armv7l). No onnxruntime or ai-edge-litert wheel exists there, so the
#          device runs TFLite only (tflite-runtime 2.14), with numpy, psutil and cffi from Debian.
# Not part of the default CI run (it takes minutes); run it from the repository root as root:
#
#   bash devices/arm/check.sh [arm64|armhf]   # cache: /var/cache/edgefleet-arm ($EDGEFLEET_ARM_CACHE)
#
# Steps: build (or reuse) a Debian root with mmdebstrap; install the device package (core +
# [tflite]) from binary wheels only (arm64: downloaded on the host, installed offline; armhf:
# resolved by pip in the root with --only-binary); then, inside it: `edge-runtime bundle verify`, `store install` of a signed bundle (signature,
# golden self-test, budgets of the rpi4 profile), `predict` on ONNX and TFLite bundles, `bench`,
# and a short `run` that connects to Mosquitto on the host and publishes its state.
# The last line says `<arch> ok: …` with what was measured; any failure exits non-zero.
set -euo pipefail
ARCH=${1:-arm64}
case "$ARCH" in
  arm64) UNAME=aarch64; QEMU=qemu-aarch64; EXTRA_DEBS="" ;;
  armhf) UNAME=armv7l; QEMU=qemu-arm; EXTRA_DEBS=",python3-numpy,python3-psutil,python3-cffi" ;;
  *) echo "usage: $0 [arm64|armhf]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
REPO=$PWD
CACHE=${EDGEFLEET_ARM_CACHE:-/var/cache/edgefleet-arm}
ROOTFS=$CACHE/rootfs-$ARCH
SUITE=${EDGEFLEET_ARM_SUITE:-bookworm}
MIRROR=${EDGEFLEET_ARM_MIRROR:-http://deb.debian.org/debian}
MQTT_HOST=127.0.0.1
MQTT_PORT=${EDGEFLEET_ARM_MQTT_PORT:-1883}
PY=${PYTHON:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/edgefleet-arm.XXXXXX)
RUN_PID=""
fail() { echo "$ARCH FAILED: $*" >&2; exit 1; }
cleanup() {
  [ -n "$RUN_PID" ] && kill "$RUN_PID" 2>/dev/null || true
  for m in proc dev; do
    mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
  done
  rm -rf "$WORK" "$ROOTFS/tmp/edgefleet-check"
}
trap cleanup EXIT
step() { echo "== $*" >&2; }

[ "$(id -u)" = 0 ] || fail "run as root (mmdebstrap, chroot)"
[ -x "$PY" ] || PY=python3
"$PY" -c "import edge_runtime, converters, skl2onnx" 2>/dev/null \
  || fail "$PY lacks the project with [convert]: pip install -e '.[dev]' first"

# ---- tools: mmdebstrap, qemu-user-static, binfmt_misc -----------------------------------------
if ! command -v mmdebstrap >/dev/null || ! command -v "$QEMU-static" >/dev/null; then
  step "installing mmdebstrap qemu-user-static binfmt-support (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap qemu-user-static binfmt-support \
    >/dev/null || fail "apt-get install mmdebstrap qemu-user-static binfmt-support"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc"
fi
[ -e "/proc/sys/fs/binfmt_misc/$QEMU" ] || update-binfmts --enable "$QEMU" \
  || fail "cannot register $QEMU with binfmt_misc"

# ---- the $ARCH root (cached) --------------------------------------------------------------------
if [ ! -e "$ROOTFS/.edgefleet-complete" ]; then
  step "building a Debian $SUITE $ARCH root in $ROOTFS (first run only; several minutes)"
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  mkdir -p "$CACHE"
  mmdebstrap --arch="$ARCH" --variant=apt --include="python3,python3-venv,ca-certificates$EXTRA_DEBS" \
    "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$CACHE/mmdebstrap.log" 2>&1 \
    || fail "mmdebstrap (log: $CACHE/mmdebstrap.log)"
  mv "$ROOTFS.tmp" "$ROOTFS"
  touch "$ROOTFS/.edgefleet-complete"
fi
# a device has /proc and /dev: psutil (memory budget, RSS) needs them. Not the host's /sys: its
# x86-64 CPU description makes numpy's ARM CPU detection crash under qemu-user.
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --rbind /dev "$ROOTFS/dev"
# (filtered, harmless under emulation: onnxruntime's cpuinfo cannot read a CPU list without
# /sys; Debian's numpy on armhf warns that qemu flushes float32 subnormals to zero)
in_root() {
  chroot "$ROOTFS" /usr/bin/env -i PATH=/opt/edgefleet/bin:/usr/bin:/bin HOME=/root "$@" \
    2> >(grep -v -e "cpuinfo" -e "cpuid_info" -e "smallest subnormal" -e "getlimits.py" \
      -e "self._float_to_str" -e "getattr(machar" >&2)
}
[ "$(in_root uname -m)" = "$UNAME" ] || fail "the root does not run as $UNAME"
MISSING=()
for deb in ${EXTRA_DEBS//,/ }; do
  in_root dpkg -s "$deb" >/dev/null 2>&1 || MISSING+=("$deb")
done
if [ ${#MISSING[@]} -gt 0 ]; then  # a root cached by an older version of this script
  step "adding ${MISSING[*]} to the cached root"
  { in_root apt-get update -qq && in_root apt-get install -y -qq "${MISSING[@]}"; } >/dev/null \
    || fail "apt-get install ${MISSING[*]}"
fi
GUEST_PY=$(in_root python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# ---- wheels: the project + its device dependencies, aarch64 binaries only ----------------------
WHEELS=$WORK/wheels
mkdir -p "$WHEELS"
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$REPO" >/dev/null \
  2> >(grep -v "^WARNING: Location" >&2) || fail "building the edgefleet wheel"
if [ "$ARCH" = arm64 ]; then
step "downloading aarch64 wheels for Python $GUEST_PY (core + [tflite])"
mapfile -t REQS < <("$PY" -c "
from devices.arm.wheels import Target, device_requirements
print('\n'.join(device_requirements(Target('aarch64', '$GUEST_PY'))))")
PLATFORMS=(--platform manylinux2014_aarch64)
for m in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${m}_aarch64"); done
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: "${PLATFORMS[@]}" \
  --python-version "$GUEST_PY" --implementation cp -d "$WHEELS" "${REQS[@]}" \
  2> >(grep -v "^WARNING: Location" >&2) || fail "a device dependency has no aarch64 wheel"
fi

# ---- signed bundles, made on the host with the converters ----------------------------------------
step "exporting signed ONNX and TFLite bundles (breast-cancer MLP) on the host"
"$PY" - "$WORK" <<'EOF' || fail "making the test bundles"
import json, pickle, sys
from pathlib import Path
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
work = Path(sys.argv[1])
data = load_breast_cancer(as_frame=True)
X, y = data.data, data.target
X.columns = [c.replace(" ", "_") for c in X.columns]
model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=400, random_state=0)).fit(X, y)
with open(work / "model.pkl", "wb") as f:
    pickle.dump(model, f)
X.iloc[:200].to_csv(work / "sample.csv", index=False)
rows = X.iloc[400:405].to_dict(orient="records")
(work / "rows.json").write_text(json.dumps({"rows": rows}))
(work / "expected.json").write_text(json.dumps(model.predict_proba(X.iloc[400:405])[:, 1].tolist()))
EOF
CONVERT=("$PY" -m converters.cli)
"${CONVERT[@]}" keygen --out "$WORK/fleet.key" --public-out "$WORK/fleet.pub" >/dev/null
"${CONVERT[@]}" export "$WORK/model.pkl" --sample "$WORK/sample.csv" --out "$WORK/onnx" \
  --name cancer-mlp --version 1.0.0 --key "$WORK/fleet.key" >/dev/null || fail "edge-convert export"
"${CONVERT[@]}" tflite "$WORK/onnx" --out "$WORK/tflite" --key "$WORK/fleet.key" >/dev/null \
  || fail "edge-convert tflite"

# ---- into the root: venv + install from the wheels only ---------------------------------------
G=/tmp/edgefleet-check
rm -rf "$ROOTFS$G"
mkdir -p "$ROOTFS$G"
cp -r "$WHEELS" "$WORK/onnx" "$WORK/tflite" "$WORK/fleet.pub" "$WORK/rows.json" \
  "$WORK/expected.json" "$ROOTFS$G/"
cat >"$ROOTFS$G/device.toml" <<EOF
[device]
id = "$ARCH-check-$$"
profile = "rpi4"

[mqtt]
url = "mqtt://$MQTT_HOST:$MQTT_PORT"

[store]
dir = "$G/store"
public_key = "$G/fleet.pub"

[telemetry]
interval_s = 1

[local_api]
enabled = false
EOF
step "installing edgefleet[tflite] in /opt/edgefleet inside the $ARCH root (binary wheels only)"
if [ "$ARCH" = armhf ]; then
  # pip in the root resolves from the package index, binary wheels only; numpy, psutil and
  # cffi come from Debian (no armv7l wheels on PyPI), hence --system-site-packages
  # the host's CA bundle: the package index may sit behind a TLS-inspecting proxy
  cp "$("$PY" -m pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)" \
    "$ROOTFS$G/ca.crt"
  rm -rf "$ROOTFS/opt/edgefleet"
  in_root python3 -m venv --system-site-packages /opt/edgefleet || fail "python3 -m venv"
  in_root env PIP_CERT="$G/ca.crt" /opt/edgefleet/bin/pip install -q --disable-pip-version-check \
    --only-binary=:all: --find-links "$G/wheels" "edgefleet[tflite]" \
    || fail "pip install edgefleet[tflite] with binary wheels only (armv7l)"
  in_root /opt/edgefleet/bin/pip check >&2 || fail "pip check in the armhf venv"
else
# the dependencies' venv is reused while the same wheels are asked for (pip under qemu is slow);
# the edgefleet wheel itself is always reinstalled
DEPS_KEY=$(ls "$WHEELS" | grep -v '^edgefleet-' | sha256sum | cut -c1-16)
if [ "$(cat "$ROOTFS/opt/edgefleet/.deps-key" 2>/dev/null)" != "$DEPS_KEY" ]; then
  rm -rf "$ROOTFS/opt/edgefleet"
  in_root python3 -m venv /opt/edgefleet || fail "python3 -m venv in the root"
  in_root /opt/edgefleet/bin/pip install -q --disable-pip-version-check --no-index \
    --find-links "$G/wheels" "edgefleet[tflite]" || fail "pip install edgefleet[tflite] (aarch64)"
  echo "$DEPS_KEY" >"$ROOTFS/opt/edgefleet/.deps-key"
else
  in_root /opt/edgefleet/bin/pip install -q --disable-pip-version-check --no-index --no-deps \
    --force-reinstall --find-links "$G/wheels" edgefleet || fail "pip install edgefleet (aarch64)"
  in_root /opt/edgefleet/bin/pip check >&2 || fail "pip check in the arm64 venv"
fi
fi
INSTALL_MB=$(du -sm "$ROOTFS/opt/edgefleet" | cut -f1)

step "edge-runtime bundle verify / store install / predict inside the root"
in_root edge-runtime bundle verify "$G/onnx" --public-key "$G/fleet.pub" >&2 \
  || fail "bundle verify (onnx)"
in_root edge-runtime bundle verify "$G/tflite" --public-key "$G/fleet.pub" >&2 \
  || fail "bundle verify (tflite)"
in_root edge-runtime store install "$G/tflite" --config "$G/device.toml" >&2 \
  || fail "store install (signature, golden self-test, rpi4 budgets)"
STATUS=$(in_root edge-runtime store status --config "$G/device.toml" --json)
FORMATS="onnx tflite"
if [ "$ARCH" = armhf ]; then
  FORMATS=tflite
  # no onnxruntime on armv7l: an ONNX bundle is refused in one line naming the reason
  if chroot "$ROOTFS" /usr/bin/env -i PATH=/opt/edgefleet/bin:/usr/bin:/bin HOME=/root \
      PYTHONWARNINGS=ignore edge-runtime predict --bundle "$G/onnx" --input "@$G/rows.json" \
      >/dev/null 2>"$WORK/onnx-refused.txt"; then
    fail "an ONNX bundle ran on armv7l without onnxruntime?"
  fi
  grep -q "onnxruntime" "$WORK/onnx-refused.txt" || fail "ONNX refusal: $(cat "$WORK/onnx-refused.txt")"
  echo "onnx on armv7l: $(cat "$WORK/onnx-refused.txt")" >&2
fi
for fmt in $FORMATS; do
  in_root edge-runtime predict --bundle "$G/$fmt" --public-key "$G/fleet.pub" \
    --input "@$G/rows.json" >"$WORK/pred-$fmt.json" || fail "predict ($fmt)"
done
"$PY" - "$WORK" "$FORMATS" "$ARCH" <<'EOF' || fail "predictions on $ARCH differ from scikit-learn"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
expected = json.loads((work / "expected.json").read_text())
for fmt in sys.argv[2].split():
    tol = 1e-4
    got = [p["probability"] for p in json.loads((work / f"pred-{fmt}.json").read_text())["predictions"]]
    worst = max(abs(a - b) for a, b in zip(got, expected))
    assert worst <= tol, f"{fmt}: max |diff| {worst:.3g} > {tol}"
    print(f"{fmt} on {sys.argv[3]}: max |diff| vs scikit-learn {worst:.2g}", file=sys.stderr)
EOF

step "single-row latency: $ARCH under qemu vs native x86-64 (same bundle)"
ARM_BENCH=$(in_root edge-runtime bench --bundle "$G/tflite" --runs 300 --batch 16 --json) \
  || fail "bench ($ARCH)"
X86_BENCH=$("$PY" -m edge_runtime.cli bench --bundle "$WORK/tflite" --runs 300 --batch 16 --json) \
  || fail "bench (x86-64)"

step "edge-runtime run: connect to Mosquitto on the host and publish the state"
TOPIC="edgefleet/v1/devices/$ARCH-check-$$/state"
mosquitto_sub -h "$MQTT_HOST" -p "$MQTT_PORT" -t "$TOPIC" -C 1 -W 120 >"$WORK/state.json" &
SUB_PID=$!
chroot "$ROOTFS" /usr/bin/env -i PATH=/opt/edgefleet/bin:/usr/bin:/bin HOME=/root \
  edge-runtime run --config "$G/device.toml" 2>"$WORK/run.log" &
RUN_PID=$!
wait "$SUB_PID" || fail "no state message on $TOPIC within 120 s (run log: $(tail -3 "$WORK/run.log"))"
sleep 3  # let it settle: model loaded, link up, one telemetry window
RSS_MB=$(ps -o rss= -p "$(pgrep -P "$RUN_PID" -n 2>/dev/null || echo "$RUN_PID")" \
  | awk '{printf "%d", $1/1024}')
kill -TERM "$RUN_PID"
wait "$RUN_PID" || true
RUN_PID=""
mosquitto_pub -h "$MQTT_HOST" -p "$MQTT_PORT" -t "$TOPIC" -r -n || true  # clear the retained state

"$PY" - "$WORK/state.json" "$INSTALL_MB" "$RSS_MB" "$STATUS" "$ARM_BENCH" "$X86_BENCH" "$ARCH" \
  "$FORMATS" <<'EOF'
import json, sys
state = json.loads(open(sys.argv[1]).read())
install_mb, rss_mb = sys.argv[2], sys.argv[3]
status, arm, x86 = (json.loads(a) for a in sys.argv[4:7])
active = status["slots"]["active"]
assert active and active["version"] == "1.0.0", f"store status: {status}"
assert state.get("online") is True, f"state message: {state}"
a = arm["single_row"]["in_process_predict"]["p50_us"] / 1000
x = x86["single_row"]["in_process_predict"]["p50_us"] / 1000
arch, formats = sys.argv[7], " and ".join(f.upper().replace("TFLITE", "TFLite")
                                          for f in sys.argv[8].split())
print(f"{arch} ok: install {install_mb} MB, RSS {rss_mb} MB (includes qemu), self-test passed, "
      f"signature verified, {formats} predictions match scikit-learn, state published, "
      f"single-row p50 {a:.3f} ms under qemu vs {x:.3f} ms native x86-64 ({a / x:.1f}x)")
EOF
