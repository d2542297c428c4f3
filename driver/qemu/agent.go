package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
)

// Agent is a connection to a QEMU guest agent (qemu-ga or vmfest's own)
// through the host end of its virtio-serial port. Like QMP it serves one
// client at a time; it is not safe for concurrent use.
type Agent struct {
	c *rpcConn
}

// newAgent speaks the guest-agent protocol over c.
func newAgent(c *lineConn) *Agent {
	return &Agent{c: newRPCConn(c, protocol{
		name: "guest agent",
		newError: func(command, class, desc string) error {
			return &AgentError{Command: command, Class: class, Desc: desc}
		},
	})}
}

// AgentError is an error the guest agent returned.
type AgentError struct {
	Command string
	Class   string
	Desc    string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("guest agent %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Is makes the agent's answer that it has no such command (by its class,
// or, through libvirt, which keeps only the description, by the words
// qemu-ga and vmfest's agent use) a driver.ErrUnsupported.
func (e *AgentError) Is(target error) bool {
	return target == driver.ErrUnsupported && (e.Class == "CommandNotFound" || strings.Contains(e.Desc, "has not been found"))
}

// DialAgent repeats its sync while the guest agent does not answer, first
// after syncFirst, then at twice the last wait up to syncInterval: a guest
// resumed from memory answers a sync sent once the port has reopened
// within milliseconds, but the first one, sent as the host reconnects, is
// often lost; a booting guest answers in seconds. Requests sent before the
// agent starts wait in the port's buffer and are answered late, so
// replies are matched by id (and later ones, delimited by 0xFF, skipped).
const (
	syncFirst    = 20 * time.Millisecond
	syncInterval = 200 * time.Millisecond
)

// DialAgent connects to the agent socket at path and synchronises with the
// agent (guest-sync-delimited), retrying until the agent answers or ctx is
// done. A returned Agent has a live agent on the other end.
func DialAgent(ctx context.Context, path string) (*Agent, error) {
	c, err := dialUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("connect to guest agent socket %s: %w", path, err)
	}
	a := newAgent(c)
	if err := a.sync(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return a, nil
}

func (a *Agent) sync(ctx context.Context) error {
	sent := map[int64]bool{}
	wait := syncFirst
	for {
		id := rand.Int64N(1 << 52)
		sent[id] = true
		req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
		if err := a.c.write(ctx, []byte(req)); err != nil {
			return timeoutErr("guest agent sync", err)
		}
		until := time.Now().Add(wait)
		wait = min(2*wait, syncInterval)
		for {
			line, err := a.c.readLine(ctx, until)
			if err != nil {
				if ctx.Err() != nil {
					return timeoutErr("guest agent did not answer", ctx.Err())
				}
				if isTimeout(err) {
					break // send another sync
				}
				return fmt.Errorf("guest agent sync: %w", err)
			}
			if i := bytes.LastIndexByte(line, 0xff); i >= 0 {
				line = line[i+1:]
			}
			var r struct {
				Return *int64 `json:"return"`
			}
			if json.Unmarshal(line, &r) == nil && r.Return != nil && sent[*r.Return] {
				return nil
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// Execute runs one agent command and returns its "return" value.
// guest-shutdown returns as soon as it is sent: the agent sends no reply,
// the guest goes down.
func (a *Agent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	if command == "guest-shutdown" {
		_, err := a.c.send(ctx, command, args)
		return nil, err
	}
	return a.c.execute(ctx, command, args)
}

// Close ends the connection.
func (a *Agent) Close() error { return a.c.Close() }
