#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser.py drives /usr/bin/chromium with
# Playwright; Playwright's own browser download is not used). `make test` and CI call this.
#
# Installed with apt-get where that is usable: as root, or through sudo without a password.
# Elsewhere it prints the command to run and exits 0, so the browser tests skip; with
# EASEL_CI=1 a browser that is missing and cannot be installed is an error (exit 1), as the
# tests themselves fail there instead of skipping. CHROMIUM names the browser's path.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
COMMAND="sudo apt-get install -y chromium"

[ -x "$CHROMIUM" ] && exit 0

missing() {
    echo "Chromium is missing ($CHROMIUM): $1" >&2
    if [ "${EASEL_CI:-}" = 1 ]; then
        exit 1
    fi
    echo "The browser tests skip without it." >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || missing "no apt-get here; install Debian's chromium package"
if [ "$(id -u)" = 0 ]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root=(sudo env)
else
    missing "installing it needs root; run: $COMMAND"
fi

echo "Installing Debian's chromium for the browser tests (apt-get install -y chromium)" >&2
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || missing "apt-get failed; run: $COMMAND"
[ -x "$CHROMIUM" ] || missing "apt-get installed no $CHROMIUM"
