package detect

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// Source is where a rule set comes from: rule files and directories on
// disk, or a file system such as the starter rules built into the binary.
type Source struct {
	Paths []string // files or directories, searched as RuleFiles does
	FS    fs.FS    // when set, every *.yaml/*.yml file in it, and Paths is ignored
	Name  string   // how messages name FS, e.g. "built-in starter rules"
}

func (s Source) String() string {
	if s.FS != nil {
		if s.Name != "" {
			return s.Name
		}
		return "rules file system"
	}
	return strings.Join(s.Paths, ",")
}

// Parse parses every rule file of the source. Rule ids must be unique.
func (s Source) Parse() ([]*Rule, error) {
	if s.FS == nil {
		return ParsePaths(s.Paths...)
	}
	files, err := fsRuleFiles(s.FS)
	if err != nil {
		return nil, err
	}
	return parseFiles(files, func(f string) ([]byte, error) { return fs.ReadFile(s.FS, f) })
}

// Load parses and compiles the rules of the source into a rule set.
func (s Source) Load(opts CompileOptions) (*RuleSet, error) {
	rules, err := s.Parse()
	if err != nil {
		return nil, err
	}
	return Compile(rules, opts)
}

// LoadFS parses and compiles every rule file in fsys into a rule set.
func LoadFS(opts CompileOptions, fsys fs.FS) (*RuleSet, error) {
	return Source{FS: fsys}.Load(opts)
}

// fsRuleFiles lists the rule files of fsys as RuleFiles does on disk.
func fsRuleFiles(fsys fs.FS) ([]string, error) {
	var out []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && p != "." {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if ext := path.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	if err == nil && len(out) == 0 {
		err = errors.New("no rule files (*.yaml, *.yml)")
	}
	return out, err
}

// fingerprint hashes the names and contents of the source's rule files:
// polling rather than inotify works on every filesystem, including
// ConfigMap volumes whose files are swapped by symlink.
func (s Source) fingerprint() (string, error) {
	var files []string
	var err error
	open := func(f string) (io.ReadCloser, error) { return os.Open(f) }
	if s.FS != nil {
		files, err = fsRuleFiles(s.FS)
		open = func(f string) (io.ReadCloser, error) { return s.FS.Open(f) }
	} else {
		files, err = RuleFiles(s.Paths...)
	}
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		io.WriteString(h, f+"\x00")
		fh, err := open(f)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", f, err)
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
