// Package schemas embeds the published schemas so the binary can serve
// them: the OpenAPI description of the REST API, the JSON Schemas of the
// usage event and of rule files.
package schemas

import _ "embed"

// OpenAPI is schemas/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// UsageEventSchema is schemas/usage-event.schema.json.
//
//go:embed usage-event.schema.json
var UsageEventSchema []byte
