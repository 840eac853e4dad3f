#!/usr/bin/env bash
# espeak-ng for the spoken_digits synthesis tests (tests/test_tasks_audio.py), which .ci/run
# requires (TOME_LAB_REQUIRE_ESPEAK=1 turns their skip into a failure).
#
#   sudo .ci/espeak-ng.sh    # install if missing, then check that it speaks
#
# Debian/Ubuntu, as root when it has to install. Running it again changes nothing. The committed
# test split (tome_lab/zoo/spoken_digits_test.npz) was made with espeak-ng 1.51, Debian 12's.
set -euo pipefail

say() { echo "espeak-ng.sh: $*" >&2; }
die() { say "$*"; exit 1; }

if ! command -v espeak-ng >/dev/null; then
    [[ $EUID -eq 0 ]] || die "espeak-ng is missing; run as root to install it"
    command -v apt-get >/dev/null || die "espeak-ng is missing and there is no apt-get"
    say "installing espeak-ng"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends espeak-ng
fi
# a spoken word comes back as a RIFF/WAVE file, not only a version string
[[ "$(espeak-ng --stdout seven | head -c 4)" == RIFF ]] || die "espeak-ng does not synthesise"
say "$(espeak-ng --version | head -n 1)"
