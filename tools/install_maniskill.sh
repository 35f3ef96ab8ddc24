#!/usr/bin/env bash
# Install ManiSkill3 for hetero.rl (benchmark: maniskill): a Vulkan device for SAPIEN, then the pip packages.
#
#   sudo tools/install_maniskill.sh [--no-apt] [--no-pip] [--no-check] [VENV]    # VENV defaults to <repo>/.venv
#
# 1. apt (NEEDS ROOT, CHANGES THE SYSTEM'S MESA): SAPIEN needs a Vulkan device even for state observations, and
#    on CPU that is Mesa's lavapipe, which needs VK_KHR_external_semaphore_fd (Mesa >= 24.3). Debian 12's own
#    Mesa 22.3 does not work, so on bookworm this adds the bookworm-backports suite (the same mirror as the
#    machine's Debian source) and installs libvulkan1, vulkan-tools, and mesa-vulkan-drivers + libosmesa6 from
#    backports. That also upgrades libegl-mesa0, libgl1-mesa-dri, libgbm1 and libglx-mesa0 (system-wide OpenGL,
#    used e.g. by MuJoCo's EGL rendering) to the backports Mesa. Skipped when a lavapipe >= 24.3 is installed.
# 2. pip into VENV: the ``maniskill`` extra of pyproject.toml (mani-skill==3.0.1, numpy<2: ManiSkill's motion
#    planner, mplib, segfaults under numpy 2, and opencv-python<4.12: 4.12 needs numpy 2), with torch held at the
#    venv's version (torch==2.13.0 when it has none) by a constraint. hetero itself is not installed: in a fresh
#    venv follow with  VENV/bin/pip install -c <(echo torch==2.13.0) -e ".[rl,maniskill]".
# 3. check: one PickCube-v1 env on the CPU (physx_cpu, render_backend none) is made, reset and stepped.
#
# Idempotent: a second run changes nothing on the system and pip finds everything satisfied.
set -euo pipefail

DO_APT=1 DO_PIP=1 DO_CHECK=1
VENV=""
for arg in "$@"; do
  case "$arg" in
    --no-apt) DO_APT=0 ;;
    --no-pip) DO_PIP=0 ;;
    --no-check) DO_CHECK=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    *) VENV="$arg" ;;
  esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
MIN_MESA=24.3
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources

log() { printf '\033[1m[install_maniskill]\033[0m %s\n' "$*"; }

# The mirror URI (and keyring) of the machine's own Debian bookworm source: deb822 files first, then sources.list.
debian_source() {
  local f out
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    out=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; key = ""; ok = 0; deb = 0
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uri = u[1] }
          else if (line ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", line); key = line }
          else if (line ~ /^Types:/) { if (line ~ /(^|[ \t])deb([ \t]|$)/) deb = 1 }
          else if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (k = 2; k <= n; k++) if (s[k] == "bookworm") ok = 1 }
        }
        if (ok && deb && uri != "") { print uri " " key; exit } }' "$f")
    if [ -n "$out" ]; then echo "$out"; return; fi
  done
  if [ -f /etc/apt/sources.list ]; then
    out=$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                             if ($(i + 1) == "bookworm") { print $i; exit } }' /etc/apt/sources.list)
    if [ -n "$out" ]; then echo "$out"; return; fi
  fi
  echo "http://deb.debian.org/debian"
}

lavapipe_ok() {  # mesa-vulkan-drivers >= MIN_MESA and libvulkan1 installed
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge "$MIN_MESA" \
    && dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q "install ok installed"
}

install_apt() {
  if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    log "no apt/dpkg here: install libvulkan1 and a Mesa >= $MIN_MESA lavapipe Vulkan driver yourself (or --no-apt)"
    return 1
  fi
  if lavapipe_ok; then
    log "apt: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) and libvulkan1 already installed"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      log "the apt step needs root (run as root, or pass --no-apt if Vulkan is set up already)"; return 1
    fi
  fi
  # shellcheck disable=SC1091
  . /etc/os-release
  log "apt: NEEDS ROOT and CHANGES SYSTEM MESA (libegl-mesa0, libgl1-mesa-dri, libgbm1, libglx-mesa0 are upgraded)"
  log "Mesa packages now: $(dpkg-query -W -f='${Package}=${Version} ' 'libegl-mesa0' 'libgl1-mesa-dri' 'libgbm1' \
      'libglx-mesa0' 'mesa-vulkan-drivers' 2>/dev/null || true)"
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "apt: bookworm-backports is already a source"
    else
      local src uri key
      src=$(debian_source)
      uri=${src%% *}
      key=${src#* }
      [ "$key" = "$src" ] || [ -z "$key" ] && key=/usr/share/keyrings/debian-archive-keyring.gpg
      log "apt: adding $BACKPORTS_FILE (URIs: $uri)"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' "$uri" "$key" \
        | $sudo tee "$BACKPORTS_FILE" >/dev/null
    fi
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libvulkan1 vulkan-tools
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libosmesa6
  else
    log "apt: ${PRETTY_NAME:-this system} is not Debian 12: installing the distribution's own Vulkan packages"
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libvulkan1 vulkan-tools mesa-vulkan-drivers
  fi
  if ! lavapipe_ok; then
    log "mesa-vulkan-drivers is $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) < $MIN_MESA: SAPIEN will not find a device"
    return 1
  fi
  log "Mesa packages after: $(dpkg-query -W -f='${Package}=${Version} ' 'libegl-mesa0' 'libgl1-mesa-dri' 'libgbm1' \
      'libglx-mesa0' 'mesa-vulkan-drivers' 2>/dev/null || true)"
}

install_pip() {
  local py="$VENV/bin/python"
  [ -x "$py" ] || { log "no Python at $py (make the venv first: python3 -m venv $VENV)"; return 1; }
  local torch_pin reqs
  torch_pin=$("$py" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])' 2>/dev/null \
              || echo 2.13.0)
  # the extra's requirements, read from pyproject.toml so that they are written down in one place
  reqs=$("$py" - "$REPO/pyproject.toml" <<'EOF'
import ast, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^maniskill\s*=\s*(\[[^\]]*\])", text, re.M)
if not m:
    sys.exit("pyproject.toml has no maniskill extra")
print("\n".join(ast.literal_eval(m.group(1))))
EOF
)
  mapfile -t reqs_arr <<<"$reqs"
  log "pip into $VENV: ${reqs_arr[*]} (constraint torch==$torch_pin)"
  "$py" -m pip install -c <(echo "torch==$torch_pin") "${reqs_arr[@]}"
  "$py" -c 'import numpy, sapien, mani_skill; print("numpy", numpy.__version__, "sapien", sapien.__version__,
                                                   "mani_skill", mani_skill.__version__)'
}

check_env() {
  log "check: PickCube-v1 on physx_cpu, state observations, no renderer"
  "$VENV/bin/python" - <<'EOF'
import time
t = time.time()
import gymnasium as gym
import mani_skill.envs  # noqa: F401  (registers the tasks)
from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper
env = CPUGymWrapper(gym.make("PickCube-v1", obs_mode="state", sim_backend="physx_cpu", render_backend="none",
                             control_mode="pd_joint_delta_pos"))
obs, _ = env.reset(seed=0)
obs, r, term, trunc, info = env.step(env.action_space.sample())
env.close()
print(f"ok: obs {obs.shape}, success {info['success']}, {time.time() - t:.1f} s")
EOF
}

if [ "$DO_APT" = 1 ]; then install_apt; fi
if [ "$DO_PIP" = 1 ]; then install_pip; fi
if [ "$DO_CHECK" = 1 ]; then check_env; fi
log "done"
