package rediscache

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// A Redis that refuses a write (out of memory under noeviction, a
// read-only replica, a failed snapshot with stop-writes-on-bgsave-error,
// an ACL) still answers, and still serves what it holds: its reads go on.
// Only a failure to reach Redis (a dial error, a timeout, a connection
// cut) is an outage, which stops reads and writes alike for a while.

// Reasons a write is refused, as WithRefusedHook and the log name them.
const (
	refusedOOM      = "oom"      // OOM command not allowed when used memory > 'maxmemory'
	refusedReadOnly = "readonly" // READONLY You can't write against a read only replica
	refusedMisconf  = "misconf"  // MISCONF: the last RDB snapshot failed
	refusedNoPerm   = "noperm"   // NOPERM: an ACL forbids the command or key
	refusedOther    = "other"    // any other error reply
)

// refusalPrefixes maps an error reply's first word to its reason.
var refusalPrefixes = [...]struct{ prefix, reason string }{
	{"OOM ", refusedOOM},
	{"READONLY ", refusedReadOnly},
	{"MISCONF ", refusedMisconf},
	{"NOPERM ", refusedNoPerm},
}

// refusalReason reports whether err is Redis answering a command with an
// error reply, as opposed to not answering, and names why.
func refusalReason(err error) (string, bool) {
	var re redis.Error
	if err == nil || errors.Is(err, redis.Nil) || !errors.As(err, &re) {
		return "", false
	}
	msg := re.Error()
	for _, p := range refusalPrefixes {
		if strings.HasPrefix(msg, p.prefix) {
			return p.reason, true
		}
	}
	return refusedOther, true
}

// settle records how Redis took the command op: done, refused (it
// answered with an error: counted and logged, Redis stays available), or
// not answered (an outage of key's shard). A nil reply (redis.Nil) is an
// answer.
func (c *Cache) settle(ctx context.Context, key, op string, err error) {
	if err == nil || errors.Is(err, redis.Nil) {
		c.health.ok(ctx, key)
		return
	}
	if reason, ok := refusalReason(err); ok {
		c.health.ok(ctx, key) // it answered
		c.refused(op, reason, err)
		return
	}
	c.health.failed(ctx, key, op, err)
}

// refused reports a write Redis refused: counted every time, logged once
// per reason and logEvery. The answer is still served, and kept in the
// memory tier: only the fleet loses it.
func (c *Cache) refused(op, reason string, err error) {
	c.onRefused(op, reason)
	if c.logs.first("refused:" + reason) {
		c.log.Warn("redis refused a write: reads go on, new answers stay in this worker's memory until it accepts writes again (logged once per reason every 10m)",
			zap.String("op", op), zap.String("reason", reason), zap.Error(err))
	}
}
