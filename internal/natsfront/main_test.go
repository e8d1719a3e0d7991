package natsfront_test

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
)

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	// go-redis logs each failed dial globally; the outage tests make many.
	redis.SetLogger(quietRedis{})
	os.Exit(m.Run())
}
