#!/usr/bin/env bash
# `make setup`: MBROLA's voices for `whisper-sv synth --voices espeak,mbrola`. The Swedish
# ones are diphones of real speakers recorded at Lund University that espeak-ng drives as mb-sw1
# (male) and mb-sw2 (female); the English ones, for `synth --language en`, are mb-us1, mb-us2,
# mb-us3 (American) and mb-en1 (British). Debian has them in contrib/non-free, Ubuntu in multiverse;
# where those are not enabled, a sources file of this project's own enables them (the system's
# files are never edited). This script never fails `make setup`: where the voices cannot be had it
# says so in one line and the toolkit carries on with espeak-ng alone; where only some can, it
# installs those and names the others in one line.
set -u
PACKAGES="mbrola mbrola-sw1 mbrola-sw2 mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1"
SOURCES=/etc/apt/sources.list.d/whisper-sv-mbrola.sources
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

skip() {
	echo "MBROLA voices not installed ($1); synth carries on with espeak-ng alone (--voices espeak)"
	exit 0
}
installed() { for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || return 1; done; }
candidate() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'; }
candidates() { for p in $PACKAGES; do candidate "$p" || return 1; done; }
# What apt said last, on one line, for the message.
last_words() { grep -v '^\s*$' "$LOG" | tail -n 1 | tr -s ' \t' ' ' | cut -c1-160; }

if installed; then
	echo "MBROLA voices present: $PACKAGES"
	exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || skip "no apt-get: not Debian or Ubuntu"
[ -z "$SUDO" ] || sudo -n true 2>/dev/null || skip "installing needs root and sudo asks for a password"
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
*" ubuntu "*) components="multiverse" keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
	case "$(dpkg --print-architecture)" in amd64 | i386) mirror=http://archive.ubuntu.com/ubuntu ;; *) mirror=http://ports.ubuntu.com/ubuntu-ports ;; esac ;;
*" debian "*) components="contrib non-free" keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror=http://deb.debian.org/debian ;;
*) skip "${PRETTY_NAME:-this system} is neither Debian nor Ubuntu" ;;
esac
codename=${VERSION_CODENAME:-${UBUNTU_CODENAME:-}}
[ -n "$codename" ] || skip "no VERSION_CODENAME in /etc/os-release"

$SUDO apt-get update -qq >"$LOG" 2>&1 || true
if ! candidates && [ ! -f "$SOURCES" ]; then
	# The mirror the system already uses for its main archive (a local mirror stays local).
	used=$(apt-get indextargets --format '$(REPO_URI)' "Release: $codename" "Component: main" "Target-Of: deb" 2>/dev/null | head -n 1)
	mirror=${used:-$mirror}
	# apt refuses two entries for one mirror and suite that name different keyrings, so try the
	# archive keyring first and then none (the system's trusted keys), and keep the first that
	# apt reads without complaint.
	for signed in "$keyring" ""; do
		[ -z "$signed" ] || [ -f "$signed" ] || continue
		printf '%s\n' "# Written by whisper-sv's \`make setup\` (tools/setup_mbrola.sh) for MBROLA's voices; delete to undo." \
			"Types: deb" "URIs: $mirror" "Suites: $codename" "Components: $components" ${signed:+"Signed-By: $signed"} |
			$SUDO tee "$SOURCES" >/dev/null || skip "cannot write $SOURCES"
		if apt-get indextargets >"$LOG" 2>&1 && ! grep -q '^[EW]:' "$LOG"; then break; fi
		$SUDO rm -f "$SOURCES"
	done
	[ -f "$SOURCES" ] || skip "apt does not accept a $components entry for $mirror $codename: $(last_words)"
	echo "enabled $components for $PACKAGES in $SOURCES"
	if ! $SUDO apt-get update -qq >"$LOG" 2>&1; then
		$SUDO rm -f "$SOURCES"
		skip "apt-get update failed with $components enabled, so $SOURCES was removed again: $(last_words)"
	fi
fi
if ! candidates; then
	# Install the voices apt has (the Swedish ones need only mbrola, mbrola-sw1 and mbrola-sw2) and
	# name the others, rather than go without all of them.
	have="" lack=""
	for p in $PACKAGES; do
		if candidate "$p"; then have="$have $p"; else lack="$lack $p"; fi
	done
	case "$have " in *" mbrola "*" mbrola-"*) ;; *) skip "apt has no candidate for$lack: $(last_words)" ;; esac
	echo "apt has no candidate for$lack: synth goes without those voices; installing the others"
	PACKAGES=${have# }
fi
echo "installing Debian packages: $PACKAGES"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES >"$LOG" 2>&1 || skip "apt-get install failed: $(last_words)"
