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

// TestREADMEConfigurationTable keeps README.md's Configuration table true:
// one row per worker flag, with its environment variable and its default.
func TestREADMEConfigurationTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("reading README.md: %v", err)
	}
	rows := configRows(t, string(readme))

	fs := worker.FlagSet(worker.DefaultFlags(), io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		row, ok := rows["--"+f.Name]
		if !ok {
			t.Errorf("README Configuration table has no row for --%s", f.Name)
			return
		}
		delete(rows, "--"+f.Name)
		if want := "`" + worker.EnvName(f) + "`"; row.env != want {
			t.Errorf("--%s: README says environment %s, the worker reads %s", f.Name, row.env, want)
		}
		if f.Name == "platform" {
			return // the worker's own GOOS/GOARCH: not a constant
		}
		if !sameDefault(f, row.def) {
			t.Errorf("--%s: README says default %s, the worker's is %q", f.Name, row.def, f.DefValue)
		}
	})
	for name := range rows {
		t.Errorf("README Configuration table lists %s, which the worker does not have", name)
	}
}

type configRow struct{ env, def string }

// configRows reads the table under "## Configuration": | flag | env | default | what |.
func configRows(t *testing.T, readme string) map[string]configRow {
	_, section, ok := strings.Cut(readme, "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
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
		t.Fatal("no flag rows found in README's Configuration table")
	}
	return rows
}

// sameDefault compares a flag's default with the README cell, whose first
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
