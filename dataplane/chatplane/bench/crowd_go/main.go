// chatplane-crowd: the members of one large group as lean protocol clients,
// for `chatplane bench group --crowd go` (chatplane/bench/crowdgo.py builds
// and runs it).
//
// Reads "USER TOKEN" lines on stdin, connects every member over raw TCP
// (dispatch, login with the inbox cursor, sync), prints "connected N" once
// every member's first sync is done, then follows the group until every
// member delivered seq -expect (or -deadline seconds pass) and prints one
// JSON line: how many members did not deliver a contiguous run from where
// they started up to -expect, each seq exactly once and in order; where they
// started; per seq the latest delivery time over the crowd (unix seconds);
// protocol counters; and the crowd's own CPU time.
//
// The members share one thing: a group push is decoded once per distinct
// payload (the server sends every member the same bytes, so the cache is
// keyed by the whole payload); each member still reads its own bytes from
// its own socket and keeps its own order.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type crowd struct {
	base    string
	group   string
	expect  uint64
	http    *http.Client
	pushes  pushCache
	members []*member
	stopped atomic.Bool

	heartbeatMs atomic.Int64
	connected   atomic.Int64 // members whose first sync is done
	finished    atomic.Int64 // members that delivered -expect

	arrival []atomic.Int64  // per seq: the latest delivery, unix ns
	ids     []atomic.Uint64 // per seq: a hash of the message id every member must agree on

	groupPushes, batches, notices, inboxPushes atomic.Int64
	pulls, syncs, requestErrors, sessionsLost  atomic.Int64
	logins                                     atomic.Int64
	pushedAgain, conflicting, foreign, cuts    atomic.Int64
	lastError                                  atomic.Value
}

func (c *crowd) dispatch(user string) (string, error) {
	resp, err := c.http.Get(c.base + "/v1/dispatch?uid=" + url.QueryEscape(user))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Endpoints []struct {
			TCP string `json:"tcp"`
		} `json:"endpoints"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	for _, e := range body.Endpoints {
		if e.TCP != "" {
			return e.TCP, nil
		}
	}
	return "", errors.New("no gateway with a TCP endpoint")
}

func (c *crowd) arrived(x msg) {
	if x.conv != c.group {
		c.foreign.Add(1)
		return
	}
	if x.seq >= uint64(len(c.arrival)) {
		return
	}
	now := time.Now().UnixNano()
	slot := &c.arrival[x.seq]
	for {
		old := slot.Load()
		if now <= old || slot.CompareAndSwap(old, now) {
			break
		}
	}
	sum := fnv64(x.id) | 1
	if !c.ids[x.seq].CompareAndSwap(0, sum) && c.ids[x.seq].Load() != sum {
		c.conflicting.Add(1)
	}
}

// heartbeat: a member silent for half the server's interval sends one. The
// members are looked at in slots, each once per half interval, so their
// heartbeats spread over time (they logged in within seconds of each other).
func (c *crowd) heartbeat() {
	const slots = 50
	for tick := 0; !c.stopped.Load(); tick++ {
		interval := c.heartbeatMs.Load()
		if interval == 0 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		time.Sleep(time.Duration(interval/2/slots) * time.Millisecond)
		now := time.Now().UnixMilli()
		for i := tick % slots; i < len(c.members); i += slots {
			if m := c.members[i]; now-m.lastWrite.Load() > interval/2 {
				_ = m.write(heartbeatFrame(now))
			}
		}
	}
}

// cut: every period, abruptly close (RST) the connections of a random share
// of the members, until the first member has the last message; each comes
// back through dispatch, login with its cursor and sync.
func (c *crowd) cut(period time.Duration, fraction float64) {
	for !c.stopped.Load() {
		time.Sleep(period)
		if c.finished.Load() > 0 {
			return
		}
		for _, i := range rand.Perm(len(c.members))[:int(fraction*float64(len(c.members)))] {
			if c.members[i].abort() {
				c.cuts.Add(1)
			}
		}
	}
}

type pushCache struct {
	mu    sync.Mutex
	byKey map[string]*groupPush
	ring  [64]string
	next  int
}

func (p *pushCache) get(payload, body []byte) (*groupPush, error) {
	p.mu.Lock()
	hit := p.byKey[string(payload)]
	p.mu.Unlock()
	if hit != nil {
		return hit, nil
	}
	decoded, err := decodeGroupPush(body)
	if err != nil {
		return nil, err
	}
	key := string(payload)
	p.mu.Lock()
	if p.byKey == nil {
		p.byKey = make(map[string]*groupPush)
	}
	if old := p.ring[p.next]; old != "" {
		delete(p.byKey, old)
	}
	p.ring[p.next] = key
	p.next = (p.next + 1) % len(p.ring)
	p.byKey[key] = decoded
	p.mu.Unlock()
	return decoded, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	base := flag.String("url", "", "the server's base URL (dispatch)")
	group := flag.String("group", "", "the large group's conversation id")
	expect := flag.Uint64("expect", 0, "wait until every member delivered this seq")
	deadline := flag.Float64("deadline", 120, "seconds to wait for that, after connecting")
	connectS := flag.Float64("connect-timeout", 300, "seconds to wait for every member to connect")
	logins := flag.Int("concurrency", 200, "logins in flight while connecting")
	profile := flag.String("cpuprofile", "", "write the crowd's own CPU profile here (after connecting)")
	cutEvery := flag.Float64("cut-every", 0, "chaos: every S seconds cut some members' connections")
	cutFraction := flag.Float64("cut-fraction", 0.1, "the share of the members cut each time")
	flag.Parse()
	if *base == "" || *group == "" || *expect == 0 {
		fmt.Fprintln(os.Stderr, "usage: chatplane-crowd -url URL -group ID -expect SEQ < 'USER TOKEN' lines")
		os.Exit(2)
	}
	c := &crowd{
		base:    strings.TrimRight(*base, "/"),
		group:   *group,
		expect:  *expect,
		arrival: make([]atomic.Int64, *expect+1),
		ids:     make([]atomic.Uint64, *expect+1),
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}},
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 4096), 1<<20)
	for in.Scan() {
		user, token, ok := strings.Cut(strings.TrimSpace(in.Text()), " ")
		if ok {
			c.members = append(c.members, &member{c: c, user: user, token: token})
		}
	}
	gate := make(chan struct{}, *logins)
	for _, m := range c.members {
		go m.run(gate)
	}
	go c.heartbeat()
	n := int64(len(c.members))
	until := time.Now().Add(time.Duration(*connectS * float64(time.Second)))
	for c.connected.Load() < n && time.Now().Before(until) {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("connected %d\n", c.connected.Load())
	if *profile != "" {
		if f, err := os.Create(*profile); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if *cutEvery > 0 {
		go c.cut(time.Duration(*cutEvery*float64(time.Second)), *cutFraction)
	}
	cpu0 := cpuSeconds()
	began := time.Now()
	until = began.Add(time.Duration(*deadline * float64(time.Second)))
	for c.finished.Load() < n && time.Now().Before(until) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would arrive now
	c.report(cpuSeconds()-cpu0, time.Since(began).Seconds())
	c.stopped.Store(true)
}

func (c *crowd) report(cpu, elapsed float64) {
	bad := 0
	starts := map[string]int{}
	var samples [][]uint64
	for _, m := range c.members {
		m.mu.Lock()
		if m.delivered > 0 {
			starts[fmt.Sprint(m.first)]++
		}
		if !m.clean() {
			bad++
			if len(samples) < 3 {
				samples = append(samples, []uint64{m.first, m.lastDelivered, m.delivered, m.dups, m.reorders})
			}
		}
		m.mu.Unlock()
	}
	arrivals := map[string]float64{}
	for seq := range c.arrival {
		if t := c.arrival[seq].Load(); t > 0 {
			arrivals[fmt.Sprint(seq)] = float64(t) / 1e9
		}
	}
	lastError, _ := c.lastError.Load().(string)
	out := map[string]any{
		"clients":         len(c.members),
		"bad":             bad,
		"starts":          starts,
		"bad_samples":     samples, // [first, last, delivered, duplicates, out of order]
		"last_arrival":    arrivals,
		"group_pushes":    c.groupPushes.Load(),
		"batches":         c.batches.Load(),
		"head_notices":    c.notices.Load(),
		"inbox_pushes":    c.inboxPushes.Load(),
		"pulls":           c.pulls.Load(),
		"syncs":           c.syncs.Load(),
		"logins":          c.logins.Load(),
		"request_errors":  c.requestErrors.Load(),
		"sessions_lost":   c.sessionsLost.Load(),
		"pushed_again":    c.pushedAgain.Load(),
		"cuts":            c.cuts.Load(),
		"conflicting":     c.conflicting.Load(),
		"foreign":         c.foreign.Load(),
		"last_error":      lastError,
		"crowd_cpu_s":     cpu,
		"crowd_elapsed_s": elapsed,
	}
	text, _ := json.Marshal(out)
	fmt.Println(string(text))
}

// fnv64 is FNV-1a of s.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
