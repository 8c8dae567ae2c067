#!/usr/bin/env bash
# kafka.sh — a real Apache Kafka broker (KRaft, single node, combined
# broker+controller) on loopback, for `keymeter dev`, the tests and CI.
#
#   kafka.sh fetch    download the broker jars from Maven Central (cached)
#   kafka.sh start    format storage if new, start, wait until it serves
#   kafka.sh stop     SIGTERM, wait for a clean shutdown
#   kafka.sh kill     SIGKILL (crash tests); storage is kept
#   kafka.sh status   exit 0 and print the pid if running
#
# Environment:
#   KEYMETER_CACHE         cache root (default $HOME/.cache/keymeter)
#   KAFKA_DATA_DIR         storage, config, log and pid file
#                          (default $KEYMETER_CACHE/kafka/data)
#   KAFKA_PORT             client listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  controller listener port (default 19093)
#   KAFKA_HEAP_OPTS        JVM heap flags (default -Xms256m -Xmx512m)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker (default 120)
#   KAFKA_FRESH=1          start (when not running) on empty storage: the
#                          topics and groups of earlier runs are dropped, so
#                          start-up does not slow down as tests add them
#                          (make test sets it; a running broker is kept)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KEYMETER_CACHE:-$HOME/.cache/keymeter}/kafka"
libs="$cache/libs"
data="${KAFKA_DATA_DIR:-$cache/data}"
port="${KAFKA_PORT:-19092}"
cport="${KAFKA_CONTROLLER_PORT:-19093}"
host=127.0.0.1
heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
timeout="${KAFKA_START_TIMEOUT:-120}"
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"

pidfile="$data/kafka.pid"
logfile="$data/kafka.log"
props="$data/server.properties"
log4j="$data/log4j2.properties"
logdir="$data/log"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# The stamp ties the cached jars to the pom that produced them, so editing
# the pom (a version bump) refetches and an unchanged pom costs nothing.
pom_stamp() { sha256sum "$here/pom.xml" | cut -d' ' -f1; }

cmd_fetch() {
	local stamp
	stamp="$(pom_stamp)"
	if [[ -f "$libs/.stamp" && "$(cat "$libs/.stamp")" == "$stamp" ]]; then
		say "jars cached in $libs"
		return 0
	fi
	command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
	local tmp="$libs.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	say "fetching broker jars into $libs"
	if ! mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
		rm -rf "$tmp"
		die "mvn dependency:copy-dependencies failed (is Maven Central reachable?)"
	fi
	echo "$stamp" >"$tmp/.stamp"
	rm -rf "$libs"
	mv "$tmp" "$libs"
	say "fetched $(ls "$libs"/*.jar | wc -l) jars"
}

# pid prints the broker's pid if it is running from this data dir.
pid() {
	[[ -f "$pidfile" ]] || return 1
	local p
	p="$(cat "$pidfile")"
	[[ -n "$p" && -r "/proc/$p/cmdline" ]] || return 1
	tr '\0' ' ' <"/proc/$p/cmdline" | grep -q 'kafka\.Kafka' || return 1
	echo "$p"
}

port_open() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

write_config() {
	mkdir -p "$data" "$logdir"
	cat >"$props" <<EOF
# Written by deploy/kafka/kafka.sh; edits are overwritten on start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$host:$cport
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport
advertised.listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$logdir
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
# Single node: internal topics cannot have more replicas than brokers.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a kill, the controller refuses the restarted broker's registration
# until the old incarnation's session expires (default 9s): keep it short.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=5000
# Tests create and delete many small topics: keep segments small and
# let the cleaner look often so compaction is visible within a test run.
log.segment.bytes=67108864
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=30000
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
delete.topic.enable=true
EOF
	cat >"$log4j" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = warn
EOF
}

# run_offset: where this run's part of the appended log starts.
run_offset=0

tail_log() {
	[[ -f "$logfile" ]] || return 0
	say "last lines of $logfile (this start):"
	tail -c +"$((run_offset + 1))" "$logfile" | grep -v '^	' | tail -n 40 >&2
}

cmd_start() {
	[[ -f "$libs/.stamp" ]] || die "jars missing in $libs: run '$0 fetch' first"
	command -v "$java" >/dev/null || die "java not found (need Java 17+): install openjdk-17-jre-headless"
	local p
	if p="$(pid)"; then
		say "already running (pid $p) on $host:$port"
		return 0
	fi
	if port_open "$port"; then
		die "port $host:$port is taken by another process; stop it or set KAFKA_PORT"
	fi
	if [[ "${KAFKA_FRESH:-}" == 1 && -d "$logdir" ]]; then
		say "fresh start: removing the storage of earlier runs in $logdir"
		rm -rf "$logdir"
	fi
	write_config
	local cp="$libs/*"
	[[ -f "$logfile" ]] && run_offset="$(stat -c %s "$logfile")"
	if [[ ! -f "$logdir/meta.properties" ]]; then
		# Kafka's cluster ids are base64url of 16 random bytes, unpadded;
		# like Kafka's own Uuid.randomUuid, never one starting with '-',
		# which the format tool's argument parser would take for an option.
		local cid=-
		while [[ "$cid" == -* ]]; do
			cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
		done
		say "formatting storage in $logdir (cluster $cid)"
		if ! "$java" -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$log4j" \
			kafka.tools.StorageTool format --standalone -t "$cid" -c "$props" >>"$logfile" 2>&1 9>&-; then
			tail_log
			die "formatting storage failed"
		fi
	fi
	say "starting broker on $host:$port (controller $host:$cport), log $logfile"
	local t0=$SECONDS offset=0
	[[ -f "$logfile" ]] && offset="$(stat -c %s "$logfile")"
	((run_offset <= offset)) || run_offset=$offset
	# setsid + closed stdio: the broker outlives this script and does not
	# hold the caller's pipes open (go test's exec would wait on them), nor
	# our lock (fd 9).
	setsid "$java" $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$log4j" -Dkafka.logs.dir="$data" \
		-cp "$cp" kafka.Kafka "$props" </dev/null >>"$logfile" 2>&1 9>&- &
	echo $! >"$pidfile"
	local started=$!
	while :; do
		if ! kill -0 "$started" 2>/dev/null; then
			tail_log
			die "broker exited during start-up"
		fi
		# Serving means: the listener accepts and the broker logged that
		# it finished start-up (metadata loaded, ready for requests).
		# Only this run's part of the appended log counts.
		if port_open "$port" && tail -c +"$((offset + 1))" "$logfile" | grep -q 'Kafka Server started'; then
			break
		fi
		if ((SECONDS - t0 >= timeout)); then
			tail_log
			kill -KILL "$started" 2>/dev/null || true
			die "broker did not serve on $host:$port within ${timeout}s"
		fi
		sleep 0.2
	done
	say "started (pid $started) in $((SECONDS - t0))s"
}

wait_exit() {
	local p=$1 limit=$2 t0=$SECONDS
	while kill -0 "$p" 2>/dev/null; do
		((SECONDS - t0 < limit)) || return 1
		sleep 0.1
	done
}

cmd_stop() {
	local p
	if ! p="$(pid)"; then
		say "not running"
		rm -f "$pidfile"
		return 0
	fi
	kill -TERM "$p"
	if ! wait_exit "$p" 60; then
		say "no clean shutdown within 60s, sending SIGKILL"
		kill -KILL "$p" 2>/dev/null || true
		wait_exit "$p" 10 || die "pid $p survives SIGKILL"
	fi
	rm -f "$pidfile"
	say "stopped"
}

cmd_kill() {
	local p
	if ! p="$(pid)"; then
		say "not running"
		rm -f "$pidfile"
		return 0
	fi
	kill -KILL "$p"
	wait_exit "$p" 10 || die "pid $p survives SIGKILL"
	rm -f "$pidfile"
	say "killed (pid $p)"
}

cmd_status() {
	local p
	if p="$(pid)"; then
		echo "running pid=$p addr=$host:$port data=$data"
		return 0
	fi
	echo "stopped data=$data"
	return 3
}

# One start/stop/kill at a time per data dir: two test packages starting
# the broker together must not launch two JVMs on one storage.
lock() {
	mkdir -p "$data"
	exec 9>"$data/.kafka.sh.lock"
	flock 9
}

case "${1:-}" in
fetch)
	mkdir -p "$cache"
	exec 8>"$cache/.fetch.lock"
	flock 8
	cmd_fetch
	;;
start)
	lock
	cmd_start
	;;
stop)
	lock
	cmd_stop
	;;
kill)
	lock
	cmd_kill
	;;
status) cmd_status ;;
*)
	echo "usage: $0 fetch|start|stop|kill|status" >&2
	exit 2
	;;
esac
