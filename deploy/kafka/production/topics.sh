#!/usr/bin/env bash
# Create keymeter's topics on a production Kafka cluster with replication
# factor 3 and the settings of the topic-*.properties files here. Run once,
# before the first keymeter start, from a host with Kafka's bin/ tools:
#
#   BOOTSTRAP=kafka-1.internal:9092 PARTITIONS=16 deploy/kafka/production/topics.sh
#
# Why: keymeter creates missing topics itself, but with replication factor 1
# (it has no setting for it yet) and leaves existing topics alone; it only
# checks their partition counts. So topics created here keep three replicas.
# PARTITIONS must equal keymeter's --partitions; the key-state, decisions,
# dead-letter and rate-limit topics have one partition (keymeter expects that;
# it creates the rate-limit topic on first use of --share-rate-limits). Safe to run
# again: existing topics get their configs re-applied, nothing else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BOOTSTRAP=${BOOTSTRAP:?set BOOTSTRAP=host:9092}
PREFIX=${PREFIX:-keymeter}            # keymeter --bus-prefix
PARTITIONS=${PARTITIONS:-16}          # keymeter --partitions
RF=${RF:-3}
BIN=${KAFKA_BIN:-}                    # directory of kafka-topics.sh; default: on PATH
topics=${BIN:+$BIN/}kafka-topics.sh
configs=${BIN:+$BIN/}kafka-configs.sh

create() { # name partitions config-file
	"$topics" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
		--topic "$1" --partitions "$2" --replication-factor "$RF"
	"$configs" --bootstrap-server "$BOOTSTRAP" --alter --entity-type topics \
		--entity-name "$1" --add-config-file "$3"
}

create "$PREFIX.events" "$PARTITIONS" "$here/topic-events.properties"
create "$PREFIX.keys" 1 "$here/topic-keys.properties"
create "$PREFIX.decisions" 1 "$here/topic-decisions.properties"
create "$PREFIX.deadletter" 1 "$here/topic-deadletter.properties"
create "$PREFIX.ratelimits" 1 "$here/topic-ratelimits.properties"
"$topics" --bootstrap-server "$BOOTSTRAP" --describe --topic "$PREFIX\..*" | grep -E 'PartitionCount|^Topic' || true
