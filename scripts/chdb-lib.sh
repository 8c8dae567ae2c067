#!/usr/bin/env bash
# Fetches libchdb (the ClickHouse engine as a shared library, from the npm
# package @chdb/lib-linux-x64-gnu) into a cache directory, once, and prints
# the directory that holds libchdb.so. Idempotent: a complete copy is reused.
#
#   export CHDB_LIB_PATH="$(scripts/chdb-lib.sh)/libchdb.so"
#
# Env: KEYMETER_CACHE (default ~/.cache/keymeter), CHDB_NPM_PACKAGE,
# CHDB_NPM_VERSION (default: latest).
set -euo pipefail

cache="${KEYMETER_CACHE:-$HOME/.cache/keymeter}/chdb"
pkg="${CHDB_NPM_PACKAGE:-@chdb/lib-linux-x64-gnu}"
ver="${CHDB_NPM_VERSION:-}"

find_lib() { find "$cache/lib" -name 'libchdb.so' -type f 2>/dev/null | head -n1; }

if [[ -f "$cache/.complete" ]]; then
	lib="$(find_lib)"
	if [[ -n "$lib" ]]; then
		dirname "$lib"
		exit 0
	fi
fi

command -v npm >/dev/null || { echo "chdb-lib.sh: npm is required to fetch $pkg (apt-get install npm)" >&2; exit 1; }
mkdir -p "$cache"
# One fetch at a time (parallel CI jobs); a second waits, then finds it done.
if command -v flock >/dev/null && [[ -z "${CHDB_LIB_LOCKED:-}" ]]; then
	export CHDB_LIB_LOCKED=1
	exec flock "$cache/.lock" "$0" "$@"
fi
if [[ -f "$cache/.complete" ]] && lib="$(find_lib)" && [[ -n "$lib" ]]; then
	dirname "$lib"
	exit 0
fi
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

spec="$pkg"
[[ -n "$ver" ]] && spec="$pkg@$ver"
echo "chdb-lib.sh: fetching $spec (~170 MB) into $cache" >&2
( cd "$tmp" && npm pack --silent "$spec" >/dev/null )
tgz="$(ls "$tmp"/*.tgz | head -n1)"
mkdir -p "$tmp/lib"
tar -xzf "$tgz" -C "$tmp/lib"
rm -f "$tgz"
found="$(find "$tmp/lib" -name 'libchdb.so' -type f | head -n1)"
[[ -n "$found" ]] || { echo "chdb-lib.sh: $spec did not contain libchdb.so" >&2; exit 1; }

rm -rf "$cache/lib"
mv "$tmp/lib" "$cache/lib"
touch "$cache/.complete"
dirname "$(find_lib)"
