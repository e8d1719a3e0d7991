package httpfront

import "sync/atomic"

// budget counts resolutions in flight against a limit. Taking a place
// never waits: a caller past the limit is told so at once, since a queue
// here would only hold callers the resolver could not serve either.
type budget struct {
	limit int64
	n     atomic.Int64
}

func newBudget(limit int) *budget { return &budget{limit: int64(limit)} }

// take reserves a place; false when the budget is spent.
func (b *budget) take() bool {
	if b.n.Add(1) > b.limit {
		b.n.Add(-1)
		return false
	}
	return true
}

// give returns a place taken.
func (b *budget) give() { b.n.Add(-1) }

func (b *budget) used() int { return int(b.n.Load()) }
