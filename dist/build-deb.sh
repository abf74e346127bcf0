#!/usr/bin/env bash
# Builds the Debian package: the release binary, its man page and shell
# completions (generated from the command line's own definitions by the
# `man` and `completions` subcommands, which only `--features assets`
# builds), then cargo-deb (installed if missing). The package lands in
# target/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --features assets
mkdir -p target/assets
target/release/vipgate man | gzip -9n > target/assets/vipgate.1.gz
target/release/vipgate completions bash > target/assets/vipgate.bash
target/release/vipgate completions zsh > target/assets/_vipgate
target/release/vipgate completions fish > target/assets/vipgate.fish

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
cargo deb --no-build --locked --strip
