package client

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
)

func TestRetryFor(t *testing.T) {
	cases := []struct {
		name    string
		err     error
		callErr error
		lost    bool
		want    retryKind
	}{
		{"answered", nil, nil, false, noRetry},
		{"error reply", contract.Errorf(404, "app:v1: not found"), nil, false, noRetry},
		{"error reply on a lost connection", contract.Errorf(503, "shutting down"), nil, true, noRetry},
		{"attempt timeout", context.DeadlineExceeded, nil, false, retryNow},
		{"nats timeout", nats.ErrTimeout, nil, false, retryNow},
		{"call budget spent", context.DeadlineExceeded, context.DeadlineExceeded, false, noRetry},
		{"caller cancelled", context.Canceled, context.Canceled, true, noRetry},
		{"connection lost during the attempt", context.Canceled, nil, true, retryAfterReconnect},
		{"timeout on a lost connection", context.DeadlineExceeded, nil, true, retryAfterReconnect},
		{"reconnecting", nats.ErrConnectionReconnecting, nil, false, retryAfterReconnect},
		{"reconnect buffer full", fmt.Errorf("publish: %w", nats.ErrReconnectBufExceeded), nil, false, retryAfterReconnect},
		{"disconnected", nats.ErrDisconnected, nil, false, retryAfterReconnect},
		{"no responders", nats.ErrNoResponders, nil, false, retryAfterPause},
		{"no responders after a reconnect", nats.ErrNoResponders, nil, true, retryAfterReconnect},
		{"connection closed", nats.ErrConnectionClosed, nil, true, noRetry},
		{"payload too large", nats.ErrMaxPayload, nil, false, noRetry},
		{"cancelled otherwise", context.Canceled, nil, false, noRetry},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := retryFor(tc.err, tc.callErr, tc.lost); got != tc.want {
				t.Errorf("retryFor(%v, %v, lost=%v) = %d, want %d", tc.err, tc.callErr, tc.lost, got, tc.want)
			}
		})
	}
}

func TestFailureIsUnreachable(t *testing.T) {
	for _, err := range []error{nats.ErrNoResponders, context.DeadlineExceeded, nats.ErrConnectionClosed, context.Canceled} {
		lost := errors.Is(err, context.Canceled)
		if got := failure(err, nil, lost, "s"); !errors.Is(got, ErrUnreachable) {
			t.Errorf("%v: %v is not ErrUnreachable", err, got)
		}
	}
	if got := failure(context.Canceled, context.Canceled, false, "s"); errors.Is(got, ErrUnreachable) || !errors.Is(got, context.Canceled) {
		t.Errorf("caller's cancel: %v", got)
	}
}
