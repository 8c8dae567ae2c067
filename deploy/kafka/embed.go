// Package kafkadeploy carries the shipped Kafka files, so that the cluster
// fixtures and `keymeter bench chaos` fetch the same jars (pom.xml through
// kafka.sh) and run brokers on the same server.properties that operators
// deploy.
package kafkadeploy

import _ "embed"

// ServerProperties is production/server.properties: one node of a
// three-node KRaft cluster (combined broker and controller).
//
//go:embed production/server.properties
var ServerProperties []byte

// Script is kafka.sh (fetch, and the single broker of make test).
//
//go:embed kafka.sh
var Script []byte

// POM is pom.xml, the broker's Maven dependencies that kafka.sh fetches.
//
//go:embed pom.xml
var POM []byte
