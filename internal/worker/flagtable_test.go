package worker_test

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/worker"
)

// flagDoc is where the flag table lives; the README links it.
const flagDoc = "docs/configuration.md"

// TestConfigurationTable keeps the flag table of docs/configuration.md
// true: one row per worker flag, with its environment variable and its
// default.
func TestConfigurationTable(t *testing.T) {
	doc, err := os.ReadFile("../../" + flagDoc)
	if err != nil {
		t.Fatalf("reading %s: %v", flagDoc, err)
	}
	rows := configRows(t, string(doc))

	fs := worker.FlagSet(worker.DefaultFlags(), io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		row, ok := rows["--"+f.Name]
		if !ok {
			t.Errorf("%s: the flag table has no row for --%s", flagDoc, f.Name)
			return
		}
		delete(rows, "--"+f.Name)
		if want := "`" + worker.EnvName(f) + "`"; row.env != want {
			t.Errorf("%s: --%s: the table says environment %s, the worker reads %s", flagDoc, f.Name, row.env, want)
		}
		if f.Name == "platform" {
			return // the worker's own GOOS/GOARCH: not a constant
		}
		if !sameDefault(f, row.def) {
			t.Errorf("%s: --%s: the table says default %s, the worker's is %q", flagDoc, f.Name, row.def, f.DefValue)
		}
	})
	for name := range rows {
		t.Errorf("%s: the flag table lists %s, which the worker does not have", flagDoc, name)
	}
}

type configRow struct{ env, def string }

// configRows reads the table under "## Flags": | flag | env | default | what |.
func configRows(t *testing.T, doc string) map[string]configRow {
	_, section, ok := strings.Cut(doc, "\n## Flags\n")
	if !ok {
		t.Fatalf("%s has no Flags section", flagDoc)
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	rows := map[string]configRow{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`--") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		rows[name] = configRow{env: strings.TrimSpace(cells[2]), def: strings.TrimSpace(cells[3])}
	}
	if len(rows) == 0 {
		t.Fatalf("no flag rows found in the Flags section of %s", flagDoc)
	}
	return rows
}

// sameDefault compares a flag's default with the table's cell, whose first
// `code` span is the value ("`1m`", "`0` (= `--cache-ttl`)"); a flag with
// no default may be described in words ("empty", "none").
func sameDefault(f *flag.Flag, cell string) bool {
	_, rest, ok := strings.Cut(cell, "`")
	code, _, _ := strings.Cut(rest, "`")
	if f.DefValue == "" {
		return !ok || strings.HasPrefix(code, "$") // an empty default, or a lookup described
	}
	if !ok {
		return false
	}
	if want, err := time.ParseDuration(f.DefValue); err == nil {
		got, err := time.ParseDuration(code)
		return err == nil && got == want
	}
	return code == f.DefValue
}
