package e2e

import (
	"os"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
)

func TestMain(m *testing.M) {
	// go-redis logs each failed dial globally; the outage test makes many.
	testenv.QuietRedisLogs()
	os.Exit(m.Run())
}
