// The few messages of the wire protocol the crowd needs (docs/protocol.md),
// read and written field by field with protowire; field numbers are those of
// proto/chatplane/v1/frames.proto.
package main

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
)

// Frame body fields.
const (
	fLogin           protowire.Number = 10
	fLoginAck        protowire.Number = 11
	fPush            protowire.Number = 14
	fPushAck         protowire.Number = 15
	fSync            protowire.Number = 16
	fSyncResponse    protowire.Number = 17
	fHistory         protowire.Number = 18
	fHistoryResponse protowire.Number = 19
	fHeartbeat       protowire.Number = 20
	fError           protowire.Number = 22
	fReconnect       protowire.Number = 23
	fSyncHint        protowire.Number = 26
	fGroupPush       protowire.Number = 45
)

var errMalformed = errors.New("malformed frame")

// msg is the part of a Message the crowd checks.
type msg struct {
	conv string
	seq  uint64
	id   string
}

// field is one field of a message: v for varints, raw for length-delimited.
type field struct {
	num protowire.Number
	v   uint64
	raw []byte
}

// each calls fn for every varint and length-delimited field of b.
func each(b []byte, fn func(f field)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errMalformed
			}
			fn(field{num: num, v: v})
			b = b[n:]
		case protowire.BytesType:
			raw, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errMalformed
			}
			fn(field{num: num, raw: raw})
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errMalformed
			}
			b = b[n:]
		}
	}
	return nil
}

// frame is a decoded Frame: its id, which body it carries, and the body.
type frame struct {
	id   uint64
	kind protowire.Number
	body []byte
}

func decodeFrame(b []byte) (frame, error) {
	var f frame
	err := each(b, func(x field) {
		if x.num == 1 {
			f.id = x.v
		} else if x.num >= fLogin {
			f.kind, f.body = x.num, x.raw
		}
	})
	return f, err
}

func decodeMessage(b []byte) (msg, error) {
	var m msg
	err := each(b, func(x field) {
		switch x.num {
		case 1:
			m.conv = string(x.raw)
		case 2:
			m.seq = x.v
		case 3:
			m.id = string(x.raw)
		}
	})
	return m, err
}

// decodeMessages decodes repeated Message fields number num of b.
func decodeMessages(b []byte, num protowire.Number) ([]msg, error) {
	var out []msg
	var bad error
	err := each(b, func(x field) {
		if x.num == num {
			m, err := decodeMessage(x.raw)
			if err != nil {
				bad = err
			}
			out = append(out, m)
		}
	})
	if err == nil {
		err = bad
	}
	return out, err
}

// groupPush is a decoded GroupPush: the messages (inflated from a
// compressed MessageBatch when it is one) and the head.
type groupPush struct {
	conv       string
	msgs       []msg
	head       uint64
	compressed bool
}

func decodeGroupPush(b []byte) (*groupPush, error) {
	p := &groupPush{}
	var compressed []byte
	err := each(b, func(x field) {
		switch x.num {
		case 1:
			p.conv = string(x.raw)
		case 3:
			compressed = x.raw
		case 4:
			p.head = x.v
		}
	})
	if err != nil {
		return nil, err
	}
	if p.msgs, err = decodeMessages(b, 2); err != nil {
		return nil, err
	}
	if compressed != nil {
		p.compressed = true
		r, err := zlib.NewReader(bytes.NewReader(compressed))
		if err != nil {
			return nil, err
		}
		batch, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		more, err := decodeMessages(batch, 1)
		if err != nil {
			return nil, err
		}
		p.msgs = append(p.msgs, more...)
	}
	return p, nil
}

// -- encoding ------------------------------------------------------------

// prefixed is a Frame{id, kind: body} with its 4-byte length prefix (TCP).
func prefixed(id uint64, kind protowire.Number, body []byte) []byte {
	out := make([]byte, 4, 4+16+len(body))
	if id != 0 {
		out = protowire.AppendTag(out, 1, protowire.VarintType)
		out = protowire.AppendVarint(out, id)
	}
	out = protowire.AppendTag(out, kind, protowire.BytesType)
	out = protowire.AppendBytes(out, body)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func loginFrame(id uint64, token string, inboxSeq uint64) []byte {
	var b []byte
	b = appendVarint(b, 1, 1) // protocol_version
	b = appendString(b, 2, token)
	b = appendVarint(b, 3, inboxSeq)
	b = appendString(b, 4, "chatplane-crowd-go")
	return prefixed(id, fLogin, b)
}

// syncFrame asks for the inbox after inboxSeq and, when the member holds the
// group up to last, for the group after last (ConversationCursor).
func syncFrame(id, inboxSeq uint64, conv string, last uint64, started bool) []byte {
	var b []byte
	b = appendVarint(b, 1, inboxSeq)
	b = appendVarint(b, 2, 500)
	if started {
		var cursor []byte
		cursor = appendString(cursor, 1, conv)
		cursor = appendVarint(cursor, 2, last)
		b = appendBytes(b, 3, cursor)
	}
	return prefixed(id, fSync, b)
}

func historyFrame(id uint64, conv string, after uint64) []byte {
	var b []byte
	b = appendString(b, 1, conv)
	b = appendVarint(b, 3, after)
	b = appendVarint(b, 4, 200)
	return prefixed(id, fHistory, b)
}

func pushAckFrame(inboxSeq uint64) []byte {
	return prefixed(0, fPushAck, appendVarint(nil, 1, inboxSeq))
}

func heartbeatFrame(ms int64) []byte {
	return prefixed(0, fHeartbeat, appendVarint(nil, 1, uint64(ms)))
}
