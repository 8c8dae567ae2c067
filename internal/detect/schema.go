package detect

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/goccy/go-yaml"
	yast "github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// SchemaJSON is the JSON Schema of a rule file: a copy of
// schemas/rules.schema.json (a test keeps the two identical).
//
//go:embed rules.schema.json
var SchemaJSON []byte

var (
	schemaOnce sync.Once
	schema     *jsonschema.Schema // one rule
	schemaErr  error
)

func ruleSchema() (*jsonschema.Schema, error) {
	schemaOnce.Do(func() {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(SchemaJSON))
		if err != nil {
			schemaErr = err
			return
		}
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		if err := c.AddResource("rules.schema.json", doc); err != nil {
			schemaErr = err
			return
		}
		if _, schemaErr = c.Compile("rules.schema.json"); schemaErr != nil {
			return
		}
		schema, schemaErr = c.Compile("rules.schema.json#/$defs/rule")
	})
	return schema, schemaErr
}

// ValidateSchemaFile checks a rule file against the JSON Schema, reporting
// each violation with file:line.
func ValidateSchemaFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return ValidateSchema(file, data)
}

// ValidateSchema checks the YAML documents in data against the JSON Schema.
func ValidateSchema(file string, data []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &LoadError{File: file, Msg: fmt.Sprintf("malformed YAML (decoder failed: %v)", p)}
		}
	}()
	sch, err := ruleSchema()
	if err != nil {
		return fmt.Errorf("rule schema: %w", err)
	}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return yamlError(file, err)
	}
	var errs []error
	for _, doc := range f.Docs {
		if doc.Body == nil {
			continue
		}
		if _, ok := doc.Body.(*yast.CommentNode); ok {
			continue
		}
		if err := refuseAliases(file, doc.Body); err != nil {
			errs = append(errs, err)
			continue
		}
		var v any
		if err := yaml.NodeToValue(doc.Body, &v); err != nil {
			errs = append(errs, yamlError(file, err))
			continue
		}
		p := positions{line: map[string]int{}, block: map[string]bool{}}
		collectPositions(doc.Body, "", p)
		items, isList := v.([]any)
		if !isList {
			items = []any{v}
		}
		if isList && len(items) == 0 {
			errs = append(errs, &LoadError{File: file, Line: p.of(""), Msg: "schema: an empty list of rules"})
		}
		for i, item := range items {
			prefix := ""
			if isList {
				prefix = "[" + strconv.Itoa(i) + "]"
			}
			errs = append(errs, validateItem(sch, file, item, prefix, p)...)
		}
	}
	return errors.Join(errs...)
}

var printer = message.NewPrinter(language.English)

func validateItem(sch *jsonschema.Schema, file string, v any, prefix string, p positions) []error {
	js, err := json.Marshal(v)
	if err != nil {
		return []error{&LoadError{File: file, Line: p.of(prefix), Msg: err.Error()}}
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return []error{&LoadError{File: file, Line: p.of(prefix), Msg: err.Error()}}
	}
	err = sch.Validate(inst)
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		if err != nil {
			return []error{&LoadError{File: file, Line: p.of(prefix), Msg: err.Error()}}
		}
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	var leaves []*jsonschema.ValidationError
	collectLeaves(ve, &leaves)
	sort.SliceStable(leaves, func(i, j int) bool {
		return strings.Join(leaves[i].InstanceLocation, "/") < strings.Join(leaves[j].InstanceLocation, "/")
	})
	for _, u := range leaves {
		path := pointerToPath(strings.Join(u.InstanceLocation, "/"))
		switch {
		case prefix == "":
		case path == "" || strings.HasPrefix(path, "["):
			path = prefix + path
		default:
			path = prefix + "." + path
		}
		msg := u.ErrorKind.LocalizedString(printer)
		if seen[path+msg] {
			continue
		}
		seen[path+msg] = true
		errs = append(errs, &LoadError{File: file, Line: p.of(path), Field: path, Msg: "schema: " + msg})
	}
	return errs
}

func collectLeaves(e *jsonschema.ValidationError, out *[]*jsonschema.ValidationError) {
	if len(e.Causes) == 0 {
		*out = append(*out, e)
		return
	}
	for _, c := range e.Causes {
		collectLeaves(c, out)
	}
}

// pointerToPath turns "/actions/0/when" into "actions[0].when".
func pointerToPath(ptr string) string {
	var b strings.Builder
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		if tok == "" {
			continue
		}
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		if _, err := strconv.Atoi(tok); err == nil {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}
