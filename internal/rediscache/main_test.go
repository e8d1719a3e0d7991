package rediscache

import (
	"os"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
)

func TestMain(m *testing.M) {
	// go-redis logs each failed dial globally; the outage tests make many.
	testenv.QuietRedisLogs()
	os.Exit(m.Run())
}
