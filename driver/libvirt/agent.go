package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
)

// agentTimeoutDefault is VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT: libvirt's
// own agent timeout.
const agentTimeoutDefault = -1

// agentNoWait is VIR_DOMAIN_QEMU_AGENT_COMMAND_NOWAIT: send, do not wait
// for a reply.
const agentNoWait = 0

// Agent reaches a machine's guest agent through libvirt
// (QEMUDomainAgentCommand): libvirtd holds the agent's virtio-serial
// socket and synchronises with the agent itself. It is safe for concurrent
// use; each command is one libvirt call on a connection of its own.
type Agent struct {
	d *Driver
	m driver.Machine
}

// Agent implements driver.GuestAgent: it sends guest-ping until the agent
// answers or ctx ends.
func (d *Driver) Agent(ctx context.Context, m driver.Machine) (driver.Agent, error) {
	a := &Agent{d: d, m: m}
	for {
		_, err := a.Execute(ctx, "guest-ping", nil)
		if err == nil {
			return a, nil
		}
		var ae *qemu.AgentError
		if errors.As(err, &ae) {
			return a, nil // the agent answered, with an error
		}
		if !retryable(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest agent of %s did not answer: %w (last: %w)", m.Name, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// retryable says whether the agent may answer later: it is not connected
// yet, not responding, or the domain is not running yet.
func retryable(err error) bool {
	return isCode(err, golibvirt.ErrAgentUnresponsive) || isCode(err, golibvirt.ErrAgentCommandTimeout) ||
		isCode(err, golibvirt.ErrOperationInvalid)
}

// Execute implements driver.Agent. The agent's errors are *qemu.AgentError,
// as the QEMU driver's.
func (a *Agent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	msg, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("guest agent %s: %w", command, err)
	}
	timeout := int32(agentTimeoutDefault)
	if dl, ok := ctx.Deadline(); ok {
		timeout = int32(max(1, min(math.Ceil(time.Until(dl).Seconds()), 3600)))
	}
	if command == "guest-shutdown" {
		timeout = agentNoWait // the agent sends no reply; the guest goes down
	}
	var out golibvirt.OptString
	err = a.d.do(ctx, a.m, "guest agent "+command+" on", func(c *conn, dom golibvirt.Domain) error {
		var err error
		out, err = c.QEMUDomainAgentCommand(dom, string(msg), timeout, 0)
		return err
	})
	if err != nil {
		return nil, agentError(command, err)
	}
	if command == "guest-shutdown" || len(out) == 0 {
		return nil, nil // the agent sends no reply; the guest goes down
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out[0]), &reply); err != nil {
		return nil, fmt.Errorf("guest agent %s: malformed reply %.200q", command, out[0])
	}
	if reply.Error != nil {
		return nil, &qemu.AgentError{Command: command, Class: reply.Error.Class, Desc: reply.Error.Desc}
	}
	return reply.Return, nil
}

// agentError turns libvirt's report of an error the agent returned
// ("unable to execute QEMU agent command 'X': DESC") into a
// *qemu.AgentError; libvirt keeps the description, not the class.
func agentError(command string, err error) error {
	var e golibvirt.Error
	if !errors.As(err, &e) || (e.Code != uint32(golibvirt.ErrInternalError) && e.Code != uint32(golibvirt.ErrAgentCommandFailed)) {
		return err
	}
	const marker = "unable to execute QEMU agent command '"
	i := strings.Index(e.Message, marker)
	if i < 0 {
		return err
	}
	_, desc, ok := strings.Cut(e.Message[i+len(marker):], "': ")
	if !ok {
		return err
	}
	return &qemu.AgentError{Command: command, Class: "GenericError", Desc: desc}
}

// Close implements driver.Agent; there is nothing to release.
func (a *Agent) Close() error { return nil }
