// One member of the crowd: one device of one user on its own TCP connection,
// following the client's rules of docs/protocol.md: the inbox cursor (acked,
// synced on a gap) and, for the large group, the per-conversation order of
// chatplane/delivery/sync.py (ConversationOrder): deliver the next seq, drop
// what was delivered, hold what is early and pull the range with
// HistoryRequest{after_seq}, start where the inbox or the sync names.
// It checks what it delivers: each seq once, each the next one.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const maxHeld = 10_000 // as the SDK: beyond this, early messages are pulled again

var errReconnect = errors.New("server asked to reconnect")

type member struct {
	c     *crowd
	user  string
	token string

	wmu       sync.Mutex // writes come from the reader and the heartbeater
	conn      net.Conn
	lastWrite atomic.Int64 // unix ms

	mu          sync.Mutex // everything below: the reader and retry timers
	inboxHave   uint64
	ackedSent   uint64
	started     bool
	last, head  uint64
	held        map[uint64]msg
	want        bool
	nextID      uint64
	syncID      uint64 // the outstanding SyncRequest (0: none)
	pullID      uint64 // the outstanding HistoryRequest (0: none)
	resync      bool
	maxPushed   uint64 // the highest seq pushed on this connection
	reconnectMs int64  // from a Reconnect frame (-1: none)
	ready       bool

	// what was delivered, in order
	first, lastDelivered, delivered uint64
	dups, reorders                  uint64
	done                            bool
}

func (m *member) run(gate chan struct{}) {
	attempt := 0
	m.reconnectMs = -1
	for !m.c.stopped.Load() {
		began := time.Now()
		err := m.session(gate)
		gate = nil
		if m.c.stopped.Load() {
			return
		}
		m.c.sessionsLost.Add(1)
		m.c.lastError.Store(fmt.Sprintf("%s: %v", m.user, err))
		if time.Since(began) > 2*time.Second {
			attempt = 0 // it stayed up: start the backoff over
		}
		m.mu.Lock()
		delayMs := m.reconnectMs
		m.reconnectMs = -1
		m.mu.Unlock()
		var delay time.Duration
		if delayMs >= 0 {
			delay = time.Duration(float64(delayMs)*(1+rand.Float64())) * time.Millisecond
		} else { // full jitter exponential backoff
			attempt++
			ceiling := math.Min(2.0, 0.1*math.Pow(2, float64(min(attempt, 6))))
			delay = time.Duration(rand.Float64() * ceiling * float64(time.Second))
		}
		time.Sleep(delay)
	}
}

// session: dispatch, connect, login with the inbox cursor, sync, then serve
// frames until the connection ends. The first one passes through the gate
// (a bound on concurrent logins) until its first sync is done.
func (m *member) session(gate chan struct{}) error {
	if gate != nil {
		gate <- struct{}{}
		defer func() {
			if gate != nil {
				<-gate
			}
		}()
	}
	endpoint, err := m.c.dispatch(m.user)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("tcp", endpoint, 10*time.Second)
	if err != nil {
		return err
	}
	defer func() {
		m.wmu.Lock()
		m.conn = nil
		m.wmu.Unlock()
		conn.Close()
	}()
	m.mu.Lock()
	m.syncID, m.pullID, m.maxPushed, m.resync = 0, 0, 0, false
	id := m.newID()
	have := m.inboxHave
	m.mu.Unlock()
	// the Login goes first: only then may anything else (a retry) write here
	if _, err := conn.Write(loginFrame(id, m.token, have)); err != nil {
		return err
	}
	m.lastWrite.Store(time.Now().UnixMilli())
	m.wmu.Lock()
	m.conn = conn
	m.wmu.Unlock()
	r := bufio.NewReaderSize(conn, 2048)
	var buf []byte
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	f, payload, err := m.read(r, &buf)
	if err != nil {
		return err
	}
	if f.kind != fLoginAck {
		return fmt.Errorf("login answered with frame %d: %s", f.kind, describe(f))
	}
	m.c.logins.Add(1)
	_ = conn.SetReadDeadline(time.Time{})
	_ = each(f.body, func(x field) {
		if x.num == 4 && x.v > 0 {
			m.c.heartbeatMs.Store(int64(x.v))
		}
	})
	m.mu.Lock()
	m.startSync()
	m.mu.Unlock()
	for {
		if err := m.handle(f, payload); err != nil {
			return err
		}
		if gate != nil && m.isReady() { // let the next member log in
			<-gate
			gate = nil
		}
		if f, payload, err = m.read(r, &buf); err != nil {
			return err
		}
	}
}

func (m *member) isReady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ready
}

func (m *member) read(r *bufio.Reader, buf *[]byte) (frame, []byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return frame{}, nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > 16<<20 {
		return frame{}, nil, fmt.Errorf("frame of %d bytes", n)
	}
	if cap(*buf) < int(n) {
		*buf = make([]byte, n)
	}
	payload := (*buf)[:n]
	if _, err := io.ReadFull(r, payload); err != nil {
		return frame{}, nil, err
	}
	f, err := decodeFrame(payload)
	return f, payload, err
}

func (m *member) write(b []byte) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.conn == nil {
		return net.ErrClosed
	}
	m.lastWrite.Store(time.Now().UnixMilli())
	_, err := m.conn.Write(b)
	return err
}

// abort closes the connection as a network failure would (a reset).
func (m *member) abort() bool {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.conn == nil {
		return false
	}
	if tcp, ok := m.conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = m.conn.Close()
	return true
}

func (m *member) newID() uint64 {
	m.nextID++
	return m.nextID
}

func describe(f frame) string {
	if f.kind != fError {
		return ""
	}
	var code uint64
	var text string
	_ = each(f.body, func(x field) {
		if x.num == 1 {
			code = x.v
		} else if x.num == 2 {
			text = string(x.raw)
		}
	})
	return fmt.Sprintf("error %d %s", code, text)
}

func (m *member) handle(f frame, payload []byte) error {
	switch f.kind {
	case fLoginAck:
		return nil
	case fGroupPush:
		p, err := m.c.pushes.get(payload, f.body)
		if err != nil {
			return err
		}
		m.mu.Lock()
		m.onGroupPush(p)
		m.mu.Unlock()
	case fPush:
		m.mu.Lock()
		err := m.onInbox(f.body, 1)
		m.mu.Unlock()
		m.c.inboxPushes.Add(1)
		return err
	case fSyncResponse:
		m.mu.Lock()
		defer m.mu.Unlock()
		if f.id == m.syncID {
			return m.onSync(f.body)
		}
	case fHistoryResponse:
		m.mu.Lock()
		defer m.mu.Unlock()
		if f.id == m.pullID {
			return m.onHistory(f.body)
		}
	case fSyncHint:
		m.mu.Lock()
		m.startSync()
		m.mu.Unlock()
	case fReconnect:
		m.mu.Lock()
		_ = each(f.body, func(x field) {
			if x.num == 1 {
				m.reconnectMs = int64(x.v)
			}
		})
		m.mu.Unlock()
		return errReconnect
	case fError:
		return m.onError(f)
	}
	return nil
}

func (m *member) onError(f frame) error {
	fatal := false
	_ = each(f.body, func(x field) {
		if x.num == 4 && x.v != 0 {
			fatal = true
		}
	})
	if fatal {
		return errors.New(describe(f))
	}
	m.c.requestErrors.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	// a refused request (rate limited, unavailable): ask again a little later
	retry := func(again func()) {
		time.AfterFunc(time.Duration(50+rand.Intn(200))*time.Millisecond, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			again()
		})
	}
	if f.id != 0 && f.id == m.syncID {
		m.syncID = 0
		retry(m.startSync)
	} else if f.id != 0 && f.id == m.pullID {
		m.pullID = 0
		retry(m.maybePull)
	}
	return nil
}

// -- the inbox -------------------------------------------------------------

// onInbox takes the InboxEntry fields number num of b: each the next one, or
// a duplicate (dropped), or early (dropped too: the sync from inboxHave
// brings it again). Acks what it holds.
func (m *member) onInbox(b []byte, num uint64) error {
	gap := false
	var bad error
	err := each(b, func(x field) {
		if uint64(x.num) != num || x.raw == nil {
			return
		}
		var seq uint64
		var body []byte
		_ = each(x.raw, func(e field) {
			if e.num == 1 {
				seq = e.v
			} else if e.num == 2 {
				body = e.raw
			}
		})
		if seq <= m.inboxHave {
			return
		}
		if seq != m.inboxHave+1 {
			gap = true
			return
		}
		m.inboxHave = seq
		message, err := decodeMessage(body)
		if err != nil {
			bad = err
			return
		}
		if message.conv == m.c.group {
			m.offer(message, true)
		}
	})
	if err == nil {
		err = bad
	}
	if m.inboxHave > m.ackedSent {
		m.ackedSent = m.inboxHave
		_ = m.write(pushAckFrame(m.inboxHave)) // a lost ack: the server retransmits
	}
	if gap {
		m.startSync()
	}
	m.maybePull()
	return err
}

func (m *member) startSync() {
	if m.syncID != 0 {
		m.resync = true
		return
	}
	m.resync = false
	m.syncID = m.newID()
	m.c.syncs.Add(1)
	_ = m.write(syncFrame(m.syncID, m.inboxHave, m.c.group, m.last, m.started))
}

func (m *member) onSync(b []byte) error {
	m.syncID = 0
	more := false
	var entries int
	var deltas [][]byte
	err := each(b, func(x field) {
		switch x.num {
		case 1:
			entries++
		case 3:
			more = x.v != 0
		case 4:
			deltas = append(deltas, x.raw)
		}
	})
	if err != nil {
		return err
	}
	if err := m.onInbox(b, 1); err != nil { // the inbox first, as the SDK
		return err
	}
	for _, delta := range deltas {
		m.onDelta(delta)
	}
	m.maybePull()
	if more || m.resync {
		if entries > 0 {
			m.startSync()
		} else {
			time.AfterFunc(50*time.Millisecond, func() {
				m.mu.Lock()
				defer m.mu.Unlock()
				m.startSync()
			})
		}
		return nil
	}
	if !m.ready {
		m.ready = true
		m.c.connected.Add(1)
	}
	return nil
}

// onDelta: a GroupDelta of the sync; for the crowd's group it names where
// this member starts (joined_seq), messages after the cursor, the head.
func (m *member) onDelta(b []byte) {
	var conv string
	var head, joined uint64
	_ = each(b, func(x field) {
		switch x.num {
		case 1:
			conv = string(x.raw)
		case 2:
			head = x.v
		case 3:
			joined = x.v
		}
	})
	if conv != m.c.group {
		return
	}
	if joined > 0 && !m.started {
		m.started, m.last = true, joined-1
		m.drain()
	}
	msgs, err := decodeMessages(b, 4)
	if err != nil {
		return
	}
	for _, x := range msgs {
		m.offer(x, false)
	}
	m.sawHead(head)
}

// -- the group ---------------------------------------------------------------

func (m *member) onGroupPush(p *groupPush) {
	if p.conv != m.c.group {
		return
	}
	m.c.groupPushes.Add(1)
	if p.compressed {
		m.c.batches.Add(1)
	}
	if len(p.msgs) == 0 {
		m.c.notices.Add(1)
	}
	for _, x := range p.msgs {
		if x.seq <= m.maxPushed {
			m.c.pushedAgain.Add(1) // the server pushed a seq twice, or out of order
		}
		m.maxPushed = max(m.maxPushed, x.seq)
		m.offer(x, false)
	}
	m.sawHead(p.head)
	m.maybePull()
}

func (m *member) offer(x msg, fromInbox bool) {
	if !m.started {
		if !fromInbox { // pushes alone never start the conversation
			m.hold(x)
			return
		}
		m.started, m.last = true, x.seq-1
	}
	if x.seq <= m.last {
		return // delivered already
	}
	if x.seq == m.last+1 && len(m.held) == 0 { // the usual case: the next one
		m.last = x.seq
		m.deliver(x)
		if m.last >= m.head {
			m.want = false
		}
		return
	}
	m.hold(x)
	m.drain()
}

func (m *member) hold(x msg) {
	if m.held == nil {
		m.held = make(map[uint64]msg)
	}
	if len(m.held) < maxHeld {
		m.held[x.seq] = x
	}
}

func (m *member) sawHead(head uint64) {
	m.head = max(m.head, head)
	if m.started && m.last < m.head {
		m.want = true
	}
}

func (m *member) drain() {
	for seq := range m.held {
		if seq <= m.last {
			delete(m.held, seq)
		}
	}
	for {
		x, ok := m.held[m.last+1]
		if !ok {
			break
		}
		delete(m.held, x.seq)
		m.last = x.seq
		m.deliver(x)
	}
	if len(m.held) > 0 {
		m.want = true // a gap below what is held: pull it
	} else if m.last >= m.head {
		m.want = false
	}
}

func (m *member) maybePull() {
	if !m.want || m.pullID != 0 || !m.started {
		return
	}
	m.pullID = m.newID()
	m.c.pulls.Add(1)
	_ = m.write(historyFrame(m.pullID, m.c.group, m.last))
}

func (m *member) onHistory(b []byte) error {
	m.pullID = 0
	m.want = false
	msgs, err := decodeMessages(b, 2)
	if err != nil {
		return err
	}
	if !m.started {
		return nil
	}
	// seqs the server skipped are not visible to this member: jump them
	if len(msgs) > 0 && msgs[0].seq > m.last+1 {
		m.last = msgs[0].seq - 1
	} else if len(msgs) == 0 && len(m.held) > 0 {
		lowest := uint64(math.MaxUint64)
		for seq := range m.held {
			lowest = min(lowest, seq)
		}
		if lowest > m.last+1 {
			m.last = lowest - 1
		}
	}
	for _, x := range msgs {
		if x.seq > m.last {
			m.hold(x)
		}
	}
	m.drain()
	if len(msgs) > 0 && m.last < m.head {
		m.want = true
	}
	m.maybePull()
	return nil
}

// deliver: the member's application gets x. The check: each seq once, each
// the one after the previous.
func (m *member) deliver(x msg) {
	switch {
	case m.delivered == 0:
		m.first = x.seq
	case x.seq <= m.lastDelivered:
		m.dups++
	case x.seq != m.lastDelivered+1:
		m.reorders++
	}
	m.delivered++
	m.lastDelivered = max(m.lastDelivered, x.seq)
	m.c.arrived(x)
	if !m.done && x.seq >= m.c.expect {
		m.done = true
		m.c.finished.Add(1)
	}
}

func (m *member) clean() bool {
	return m.delivered > 0 && m.dups == 0 && m.reorders == 0 && m.lastDelivered == m.c.expect &&
		m.delivered == m.lastDelivered-m.first+1
}
