#!/usr/bin/env bash
# Builds the Debian package and checks what it holds: the files, the
# conffile, the maintainer scripts, a packaged configuration that the
# packaged binary accepts, a man page that renders, completions, and a unit
# that `systemd-analyze verify` accepts. Run by .ci/run; needs dpkg-deb
# (and installs systemd's tools when they are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

bash dist/build-deb.sh
deb=$(ls -t target/debian/vipgate_*.deb | head -1)
echo "== checking $deb"
fail() { echo "package check: $*" >&2; exit 1; }

contents=$(dpkg-deb -c "$deb")
for file in ./usr/bin/vipgate ./usr/lib/systemd/system/vipgate.service \
    ./etc/vipgate/vipgate.toml ./usr/share/man/man1/vipgate.1.gz \
    ./usr/share/bash-completion/completions/vipgate \
    ./usr/share/zsh/vendor-completions/_vipgate \
    ./usr/share/fish/vendor_completions.d/vipgate.fish \
    ./usr/share/doc/vipgate/README.md \
    ./usr/share/doc/vipgate/docs/configuration.md \
    ./usr/share/vipgate/grafana/vipgate.json; do
  grep -q " $file\$" <<<"$contents" || fail "$file is missing"
done

control=$(mktemp -d)
root=$(mktemp -d)
trap 'rm -rf "$control" "$root"' EXIT
dpkg-deb -e "$deb" "$control"
dpkg-deb -x "$deb" "$root"
grep -qx /etc/vipgate/vipgate.toml "$control/conffiles" || fail "the configuration is not a conffile"
grep -q '^Depends:.*adduser' "$control/control" || fail "adduser is not a dependency"
grep -q 'adduser --system' "$control/postinst" || fail "postinst does not create the vipgate user"
grep -q 'vipgate upgrade -c /etc/vipgate/vipgate.toml' "$control/postinst" || fail "postinst does not hand a running vipgate over on upgrade"
if grep -Eq 'deb-systemd-invoke (restart|try-restart)' "$control/postinst"; then
  fail "an upgrade restarts vipgate instead of handing it over"
fi
if grep -q 'deb-systemd-invoke stop' "$control/prerm" \
    && ! grep -B1 'deb-systemd-invoke stop' "$control/prerm" | grep -q '"$1" = remove'; then
  fail "an upgrade stops vipgate (prerm) instead of handing it over"
fi

# The packaged binary accepts the packaged configuration.
"$root/usr/bin/vipgate" check -c "$root/etc/vipgate/vipgate.toml" >/dev/null \
  || fail "the packaged configuration does not pass check"
"$root/usr/bin/vipgate" --version | grep -q '^vipgate ' || fail "no version"
zcat "$root/usr/share/man/man1/vipgate.1.gz" | grep -q '^\.TH vipgate 1' || fail "the man page has no title"
grep -q 'vipgate' "$root/usr/share/bash-completion/completions/vipgate" || fail "empty bash completion"

# The unit, with its commands pointed at the unpacked binary (the check
# needs them to exist) and its man page reachable.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "== installing systemd (for systemd-analyze)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
unit=$(mktemp --suffix=.service)
sed "s#/usr/bin/vipgate#$root/usr/bin/vipgate#g" "$root/usr/lib/systemd/system/vipgate.service" > "$unit"
if command -v man >/dev/null 2>&1; then
  MANPATH="$root/usr/share/man" systemd-analyze verify "$unit"
else
  systemd-analyze verify --man=no "$unit"
fi
rm -f "$unit"
echo "package check: $(basename "$deb") holds what it should"
