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
