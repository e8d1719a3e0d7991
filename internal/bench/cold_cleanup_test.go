package bench_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regcap/regcap/internal/bench"
	"github.com/regcap/regcap/internal/testenv"
)

// TestColdTagsAreDeleted: the tags a cold run pushes are deleted by
// Cleanup, in the in-process registry and in CNCF distribution; the
// image's own tag and manifest stay.
func TestColdTagsAreDeleted(t *testing.T) {
	for _, c := range []struct {
		name string
		reg  func(t *testing.T) *testenv.Registry
	}{
		{"in-process registry", func(t *testing.T) *testenv.Registry { return testenv.StartRegistry(t) }},
		{"distribution", func(t *testing.T) *testenv.Registry {
			return testenv.StartDistribution(t, testenv.DistributionConfig{}).Pusher
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg := c.reg(t)
			reg.PushImage(t, "bench/cold", "v1", testenv.OCIManifest, "linux/amd64")
			ref := reg.Ref("bench/cold", "v1")
			ctx := context.Background()
			f := bench.FreshTags([]string{ref})
			for _, n := range []int{5, 3} {
				_, err := f.Tags(ctx, n)
				testenv.Must(t, err, "pushing fresh tags")
			}
			if got := listTags(t, ref); len(got) != 9 {
				t.Fatalf("%d tags after pushing 8 fresh ones: %v", len(got), got)
			}
			if f.Pushed() != 8 {
				t.Fatalf("Pushed %d, want 8", f.Pushed())
			}
			n, err := f.Cleanup(ctx)
			if err != nil || n != 8 {
				t.Fatalf("Cleanup deleted %d: %v", n, err)
			}
			if got := listTags(t, ref); !slices.Equal(got, []string{"v1"}) {
				t.Fatalf("tags left after Cleanup: %v, want only v1", got)
			}
			r, _ := name.ParseReference(ref)
			_, err = remote.Get(r)
			testenv.Must(t, err, "the image's own tag after Cleanup")
			if n, err := f.Cleanup(ctx); n != 0 || err != nil || f.Pushed() != 0 {
				t.Fatalf("a second Cleanup: %d, %v", n, err)
			}
		})
	}
}

func listTags(t *testing.T, ref string) []string {
	t.Helper()
	r, err := name.ParseReference(ref)
	testenv.Must(t, err, "parse")
	tags, err := remote.List(r.Context())
	testenv.Must(t, err, "listing tags")
	var out []string
	for _, tag := range tags {
		if tag == "v1" || strings.HasPrefix(tag, "regcap-bench-") {
			out = append(out, tag)
		}
	}
	slices.Sort(out)
	if len(out) > 0 && out[len(out)-1] == "v1" {
		out = append([]string{"v1"}, out[:len(out)-1]...)
	}
	return out
}
