package handlers

import (
	"errors"
	"strings"
	"testing"

	"github.com/regcap/regcap/contract"
)

// TestReferenceErrorsInWords: a refused reference says what is wrong in
// words, not with the grammar's regular expression; the requester shows
// these same messages when it checks a reference before sending it.
func TestReferenceErrorsInWords(t *testing.T) {
	for _, tc := range []struct{ ref, want string }{
		{"BusyBox", `repository path component "BusyBox" must be lower case`},
		{"ghcr.io/Kubewarden/policy:v1", `repository path component "Kubewarden" must be lower case`},
		{"localhost:5000/a//b:v1", `repository path component "" is empty`},
		{"localhost:5000/a/:v1", `repository path component "" is empty`},
		{"localhost:5000/a/../b:v1", `repository path component ".." is not allowed`},
		{"localhost:5000/-a:v1", `repository path component "-a" must start and end with a lower-case letter or a digit`},
		{"localhost:5000/a-:v1", `must start and end with a lower-case letter or a digit`},
		{"localhost:5000/a___b:v1", `repository path component "a___b" has separators in a row`},
		{"localhost:5000/a..b:v1", `has separators in a row`},
		{"busy box", `repository path component "busy box" holds ' ': only lower-case letters, digits and the separators`},
		{"localhost:5000/a:-v1", `tag "-v1" must start with a letter, a digit or _`},
		{"busybox:v1!", `tag "v1!" holds '!': only letters, digits, _, . and - are allowed`},
		{"localhost:99999/a:v1", `registry port "99999" is not a number from 1 to 65535`},
		{"localhost:/a:v1", `registry port "" is not a number`},
	} {
		_, err := ParseReference([]byte(`"` + tc.ref + `"`))
		var ce *contract.Error
		if !errors.As(err, &ce) || ce.Code != 400 || !strings.Contains(ce.Message, tc.want) || strings.Contains(ce.Message, "[a-z0-9]+") {
			t.Errorf("%s: %v\nwant a 400 saying %q, in words", tc.ref, err, tc.want)
		}
	}
}
