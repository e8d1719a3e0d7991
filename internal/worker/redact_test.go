package worker

import (
	"strings"
	"testing"
)

// TestRedactURL checks that no URL the worker logs carries a password:
// user info, a Sentinel URL's password parameter, each URL of a NATS list.
func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"redis://127.0.0.1:6379", "redis://127.0.0.1:6379"},
		{"redis://:s3cret@127.0.0.1:6379/0", "redis://:xxxxx@127.0.0.1:6379/0"},
		{"rediss://u:s3cret@127.0.0.1:6380", "rediss://u:xxxxx@127.0.0.1:6380"},
		{"redis://127.0.0.1:26379?master_name=m&password=s3cret&addr=127.0.0.1:26380", "redis://127.0.0.1:26379?addr=127.0.0.1%3A26380&master_name=m&password=xxxxx"},
		{"redis://127.0.0.1:26379?master_name=m&sentinel_password=s3cret", "redis://127.0.0.1:26379?master_name=m&sentinel_password=xxxxx"},
		{"nats://a:s3cret@127.0.0.1:4222,nats://b:s3cret@127.0.0.2:4222", "nats://a:xxxxx@127.0.0.1:4222,nats://b:xxxxx@127.0.0.2:4222"},
		{"nats://127.0.0.1:4222, nats://127.0.0.2:4222", "nats://127.0.0.1:4222,nats://127.0.0.2:4222"},
		{"redis://u:s3cret@127.0.0.1:6379/%zz", "<unparsable URL>"},
		{"127.0.0.1:6379?password=s3cret", "<unparsable URL>"},
		{"127.0.0.1:6379", "127.0.0.1:6379"}, // shown, to say what is wrong with it
	}
	for _, tc := range cases {
		got := redactURL(tc.in)
		if got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("redactURL(%q) kept the password: %q", tc.in, got)
		}
	}
}
