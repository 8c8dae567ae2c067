#!/usr/bin/env bash
# Installs the Debian packages keymeter's tests and `make run` need when any is
# missing: with apt-get as root, through sudo otherwise; when neither works it
# stops and prints the one command to run.
#
#   scripts/debian-deps.sh test   # everything `make test` needs
#   scripts/debian-deps.sh run    # what `make run` needs (nothing from Debian today)
set -euo pipefail

what="${1:-test}"
case "$what" in
test) pkgs=(protobuf-compiler clickhouse-server nats-server wrk nginx-light chromium python3-venv ca-certificates curl fonts-dejavu-core)
	tools=(protoc clickhouse-server nats-server wrk nginx chromium curl) ;;
run) pkgs=(ca-certificates); tools=() ;;
*) echo "usage: $0 test|run" >&2; exit 2 ;;
esac

missing=()
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null || [[ -x "/usr/sbin/$t" ]] || missing+=("$t")
done
# python3 -m venv needs ensurepip, which Debian ships separately.
if [[ "$what" == test ]] && ! python3 -c 'import ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
for tool in go java mvn npm python3; do
	command -v "$tool" >/dev/null || { echo "debian-deps: $tool not found: the README's prerequisites are Go, Java 17 with Maven, npm and Python 3" >&2; exit 1; }
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "debian-deps: missing ${missing[*]}; installing ${pkgs[*]}" >&2
if [[ "$(id -u)" == 0 ]]; then
	apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get)
else
	echo "debian-deps: cannot install packages as $(id -un). Run:" >&2
	echo "  sudo apt-get install -y --no-install-recommends ${pkgs[*]}" >&2
	exit 1
fi
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null || [[ -x "/usr/sbin/$t" ]] || { echo "debian-deps: $t still missing after install" >&2; exit 1; }
done
