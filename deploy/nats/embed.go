// Package natsdeploy carries the shipped NATS server configuration, so that
// the cluster fixtures and `keymeter bench chaos` run nats-server on the
// very file operators deploy.
package natsdeploy

import _ "embed"

// ClusterConf is nats-server.conf: one node of a three-node JetStream
// cluster (node name and passwords from the environment).
//
//go:embed nats-server.conf
var ClusterConf []byte
