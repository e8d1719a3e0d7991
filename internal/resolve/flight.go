package resolve

import (
	"container/list"
	"context"
	"errors"
	"sync"
)

// flights runs one resolution per key at a time (a singleflight that
// counts), and bounds them: at most max resolutions at once, shared
// fairly between registries. Callers of a key already in flight join it
// for free: only distinct work takes a place. When every place is taken,
// a registry with fewer resolutions than the busiest one pushes out the
// busiest one's newest resolution still waiting (for Redis, the fleet
// lock or a fetch slot): its callers are answered 503 at once, and a miss
// for a healthy registry never waits behind a hanging one.
type flights struct {
	max int

	mu    sync.Mutex
	byKey map[string]*flight
	byReg map[string]*registryFlights
	total int
}

// registryFlights are one registry's resolutions.
type registryFlights struct {
	n       int
	waiting list.List // of *flight not yet fetching, oldest first
}

// flight is one resolution of a key, shared by its callers.
type flight struct {
	key, registry string
	// ctx ends when the flight is pushed out (cause errPushedOut) or the
	// resolver closes.
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	res    resolved
	err    error
	// after is what its resolution leaves for the fleet once the
	// callers are answered (the Redis store, the lock's waiters); only
	// the goroutine running the resolution touches it.
	after func()

	elem *list.Element // in its registry's waiting list; nil once fetching
	out  bool          // pushed out: no longer counted
}

// errPushedOut is the cause of a flight pushed out for another
// registry's share.
var errPushedOut = errors.New("pushed out for another registry's share")

func newFlights(max int) *flights {
	return &flights{max: max, byKey: map[string]*flight{}, byReg: map[string]*registryFlights{}}
}

// join returns key's flight, and whether the caller must run it (a new
// one). A new flight is refused (nil) when every place is taken and no
// busier registry has one to give.
func (fs *flights) join(parent context.Context, key, registry string) (f *flight, leader bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.byKey[key]; f != nil {
		return f, false
	}
	rf := fs.byReg[registry]
	if rf == nil {
		rf = &registryFlights{}
	}
	if fs.total >= fs.max && !fs.pushOut(registry, rf.n) {
		return nil, false
	}
	fs.byReg[registry] = rf
	f = &flight{key: key, registry: registry, done: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancelCause(parent)
	f.elem = rf.waiting.PushBack(f)
	rf.n++
	fs.total++
	fs.byKey[key] = f
	return f, true
}

// pushOut frees a place for a registry that has mine resolutions: the
// newest waiting flight of the registry with the most, if it has at
// least two more. fs.mu is held.
func (fs *flights) pushOut(registry string, mine int) bool {
	var victim *registryFlights
	for h, rf := range fs.byReg {
		if h != registry && rf.waiting.Len() > 0 && rf.n >= mine+2 && (victim == nil || rf.n > victim.n) {
			victim = rf
		}
	}
	if victim == nil {
		return false
	}
	f := victim.waiting.Back().Value.(*flight)
	fs.remove(f)
	f.out = true
	f.cancel(errPushedOut)
	return true
}

// fetching marks f as holding a fetch slot: it is no longer pushed out.
func (fs *flights) fetching(f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f.elem != nil {
		fs.byReg[f.registry].waiting.Remove(f.elem)
		f.elem = nil
	}
}

// finish records f's result, wakes its callers and stops counting f.
func (fs *flights) finish(f *flight, res resolved, err error) {
	fs.answer(f, res, err)
	fs.retire(f)
}

// answer records f's result, wakes its callers and stops counting f
// against max. Callers of its key still join it, and get its result at
// once, until retire: the resolution's work for the fleet (the Redis
// store) goes on meanwhile, and a new resolution of the key would only
// wait on it.
func (fs *flights) answer(f *flight, res resolved, err error) {
	fs.mu.Lock()
	if !f.out {
		fs.uncount(f)
		f.out = true
	}
	fs.mu.Unlock()
	f.res, f.err = res, err
	close(f.done)
}

// retire forgets f, once its resolution's work is over: the next caller
// of its key starts a new resolution.
func (fs *flights) retire(f *flight) {
	fs.mu.Lock()
	if !f.out {
		fs.uncount(f)
		f.out = true
	}
	if fs.byKey[f.key] == f {
		delete(fs.byKey, f.key)
	}
	fs.mu.Unlock()
	f.cancel(nil)
}

// keys is the number of keys with a resolution, running or finishing
// its work for the fleet.
func (fs *flights) keys() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.byKey)
}

// remove stops counting f and forgets it. fs.mu is held.
func (fs *flights) remove(f *flight) {
	fs.uncount(f)
	if fs.byKey[f.key] == f {
		delete(fs.byKey, f.key)
	}
}

// uncount stops counting f against max. fs.mu is held.
func (fs *flights) uncount(f *flight) {
	rf := fs.byReg[f.registry]
	if f.elem != nil {
		rf.waiting.Remove(f.elem)
		f.elem = nil
	}
	if rf.n--; rf.n == 0 {
		delete(fs.byReg, f.registry)
	}
	fs.total--
}

// count is the number of resolutions running.
func (fs *flights) count() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.total
}

// perRegistry is the number of resolutions running per registry.
func (fs *flights) perRegistry() map[string]int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make(map[string]int, len(fs.byReg))
	for h, rf := range fs.byReg {
		out[h] = rf.n
	}
	return out
}
