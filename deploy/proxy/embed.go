// Package proxydeploy carries the shipped proxy configurations, so that
// `keymeter bench proxy --nginx` runs nginx on the very file operators
// deploy, from any directory.
package proxydeploy

import _ "embed"

// NginxConf is nginx.conf: nginx in front of the API with keymeter's
// forward-auth (auth_request).
//
//go:embed nginx.conf
var NginxConf []byte
