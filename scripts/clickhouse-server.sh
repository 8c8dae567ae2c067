#!/usr/bin/env bash
# Starts, stops or kills a private ClickHouse server on loopback for tests:
# Debian's clickhouse-server package (apt-get install clickhouse-server),
# with its own config, data and logs under $KEYMETER_CLICKHOUSE_DIR, listening
# on 127.0.0.1 only, on non-default ports so it never meets a real server.
#
#   scripts/clickhouse-server.sh start   # idempotent; waits until it answers
#   scripts/clickhouse-server.sh stop    # SIGTERM, waits
#   scripts/clickhouse-server.sh kill    # SIGKILL (tests reconnection)
#   scripts/clickhouse-server.sh status
#
# Env: KEYMETER_CLICKHOUSE_DIR (default ${KEYMETER_CACHE:-$HOME/.cache/keymeter}/clickhouse-server),
#      KEYMETER_CLICKHOUSE_TCP_PORT (19000), KEYMETER_CLICKHOUSE_HTTP_PORT (18123).
# The tests connect to 127.0.0.1:$KEYMETER_CLICKHOUSE_TCP_PORT.
set -euo pipefail

dir="${KEYMETER_CLICKHOUSE_DIR:-${KEYMETER_CACHE:-$HOME/.cache/keymeter}/clickhouse-server}"
tcp="${KEYMETER_CLICKHOUSE_TCP_PORT:-19000}"
http="${KEYMETER_CLICKHOUSE_HTTP_PORT:-18123}"
pidfile="$dir/server.pid"
bin="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answers() {
	# The native port accepts TCP and the HTTP port answers /ping.
	if command -v curl >/dev/null; then
		curl -fsS "http://127.0.0.1:$http/ping" >/dev/null 2>&1
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null
	fi
}

write_config() {
	mkdir -p "$dir/data/" "$dir/tmp/" "$dir/log" "$dir/user_files/" "$dir/format_schemas/"
	cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/server.err.log</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$tcp</tcp_port>
    <http_port>$http</http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>50</max_concurrent_queries>
    <uncompressed_cache_size>134217728</uncompressed_cache_size>
    <mark_cache_size>134217728</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
	cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval>
        </default>
    </quotas>
</yandex>
XML
}

start() {
	if running && answers; then
		echo "clickhouse-server: running (pid $(cat "$pidfile"), 127.0.0.1:$tcp)"
		return 0
	fi
	[[ -x "$bin" ]] || { echo "clickhouse-server.sh: $bin not found: apt-get install clickhouse-server" >&2; exit 1; }
	write_config
	rm -f "$pidfile"
	# Not --daemon: we keep the pid ourselves and the output in the log dir.
	nohup "$bin" --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
	echo $! >"$pidfile"
	for _ in $(seq 1 100); do
		if answers; then
			echo "clickhouse-server: started (pid $(cat "$pidfile"), 127.0.0.1:$tcp)"
			return 0
		fi
		if ! running; then break; fi
		sleep 0.1
	done
	echo "clickhouse-server.sh: server did not come up; see $dir/log/" >&2
	tail -n 20 "$dir/log/server.err.log" "$dir/log/stdout.log" >&2 2>/dev/null || true
	exit 1
}

stop() {
	local sig="$1"
	if ! running; then
		echo "clickhouse-server: not running"
		rm -f "$pidfile"
		return 0
	fi
	local pid
	pid="$(cat "$pidfile")"
	kill "-$sig" "$pid"
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	rm -f "$pidfile"
	echo "clickhouse-server: stopped ($sig)"
}

case "${1:-}" in
start) start ;;
stop) stop TERM ;;
kill) stop KILL ;;
status) if running && answers; then echo "running (pid $(cat "$pidfile"), 127.0.0.1:$tcp)"; else echo "not running"; exit 1; fi ;;
*) echo "usage: $0 start|stop|kill|status" >&2; exit 2 ;;
esac
